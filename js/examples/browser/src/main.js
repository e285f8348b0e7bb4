// The page's script: fetches a protected model (and the external data files its header
// lists, beside it), decrypts it in the page with the key typed in, and runs it in
// onnxruntime-web on a test input. build.mjs bundles it with everything it imports.
import * as ort from "onnxruntime-web";
import { createSession, externalFilesOf } from "onnx-protect";

// onnxruntime-web fetches its WebAssembly at run time: from ort/ beside this script, where
// build.mjs copies it. Only the .wasm file is named: its JavaScript glue is in the bundle (a
// directory given as a string would make onnxruntime-web fetch the glue from there too).
ort.env.wasm.wasmPaths = { wasm: new URL("ort/ort-wasm-simd-threaded.jsep.wasm", import.meta.url).href };
// One thread: more need a cross-origin-isolated page (served with COOP and COEP headers).
ort.env.wasm.numThreads = 1;

const MODEL = new URL("model.onnx", document.baseURI);

async function bytes(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
}

async function run() {
  const out = document.getElementById("out");
  out.textContent = "";
  try {
    const model = await bytes(MODEL);
    const externalData = new Map();
    for (const location of externalFilesOf(model)) externalData.set(location, await bytes(new URL(location, MODEL)));
    const key = document.getElementById("key").value;
    const { session } = await createSession(ort, model, { key, externalData });
    // A test input of the model's first input's shape (free dimensions 1).
    const shape = session.inputMetadata[0].shape.map((d) => (typeof d === "number" ? d : 1));
    const x = Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, (_, k) => Math.sin(k));
    const result = await session.run({ [session.inputNames[0]]: new ort.Tensor("float32", x, shape) });
    out.textContent = JSON.stringify({ output: Array.from(result[session.outputNames[0]].data) });
  } catch (e) {
    // onnx-protect's errors have a stable kind: wrong_key, modified, ...
    out.textContent = JSON.stringify({ error: e.kind ?? "error", message: String(e.message ?? e) });
  }
}

document.getElementById("run").addEventListener("click", run);
