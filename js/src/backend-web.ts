// `#backend` outside Node: the byte work on the calling thread (WebCrypto, hash-wasm).
export { portableBackend as backend } from "./backend.js";
