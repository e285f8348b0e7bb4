// `#engine` outside Node: the byte work on the calling thread (WebCrypto, hash-wasm).
export { portableEngine as engine } from "./engine.js";
