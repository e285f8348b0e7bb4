// Builds the page: src/main.js, which imports onnx-protect and onnxruntime-web, bundled by
// esbuild into one ES module, public/app.js; and the WebAssembly file onnxruntime-web
// fetches at run time copied into public/ort/ (main.js points ort.env.wasm.wasmPaths there).
// Serve public/ as it is: no import map, no node_modules.
//
//   npm install && node build.mjs
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import * as esbuild from "esbuild";

const here = path.dirname(fileURLToPath(import.meta.url));
const out = path.join(here, "public");

await esbuild.build({
  entryPoints: [path.join(here, "src/main.js")],
  outfile: path.join(out, "app.js"),
  bundle: true,
  format: "esm",
  // The "browser" platform picks onnx-protect's browser byte backend and onnxruntime-web's
  // bundle with its JavaScript glue inside (only the .wasm file stays outside).
  platform: "browser",
  target: "es2022",
  minify: true,
  sourcemap: true,
  logLevel: "warning",
});

// The WebAssembly onnxruntime-web's bundle loads (its CPU and WebGPU build); it must be served
// as application/wasm.
const ortDist = path.dirname(fileURLToPath(import.meta.resolve("onnxruntime-web")));
fs.mkdirSync(path.join(out, "ort"), { recursive: true });
for (const f of ["ort-wasm-simd-threaded.jsep.wasm"]) fs.copyFileSync(path.join(ortDist, f), path.join(out, "ort", f));
console.log(`built ${path.relative(process.cwd(), out) || "."}: app.js, ort/`);
