// The browser recipe of docs/js.md, as a user's project has it: js/examples/browser copied
// into a fresh folder whose node_modules holds what `npm install` puts there (onnx-protect
// linked to this package, onnxruntime-web and esbuild of this package's lock file), built with
// its own build.mjs (esbuild), and public/ served alone: the page decrypts a protected model
// (with external data) with the key typed in and runs it in onnxruntime-web; its outputs must
// be onnxruntime-node's on the plain model, a wrong key and a changed side file are refused.
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import path from "node:path";

import * as ortNode from "onnxruntime-node";

import { ROOT, tempDir, VECTORS } from "../test/util.mjs";

const JS = path.join(ROOT, "js");
const TYPES = { ".js": "text/javascript", ".wasm": "application/wasm", ".html": "text/html", ".map": "application/json" };

/** Serves the files of `dir` (nothing above it); `missed` collects the paths it had not. */
async function serveDir(dir, missed) {
  const server = http.createServer((req, res) => {
    const url = decodeURIComponent(new URL(req.url, "http://x").pathname);
    const file = path.resolve(dir, "." + (url === "/" ? "/index.html" : url));
    if (!file.startsWith(dir + path.sep) || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
      if (url !== "/favicon.ico") missed.push(url);
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "content-type": TYPES[path.extname(file)] ?? "application/octet-stream" });
    fs.createReadStream(file).pipe(res);
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return server;
}

/** Runs the recipe in `browser`; returns the lines to print and whether every check passed. */
export async function recipeCase(browser) {
  const work = tempDir();
  const lines = [];
  let ok = true;
  const check = (cond, what) => {
    lines.push(`${cond ? "ok" : "FAIL"} recipe: ${what}`);
    ok &&= cond;
  };
  let server = null;
  try {
    // The project as the recipe lays it out, its packages where npm would put them.
    const src = path.join(JS, "examples/browser");
    for (const f of ["package.json", "build.mjs", "src/main.js", "public/index.html"]) {
      fs.mkdirSync(path.dirname(path.join(work, f)), { recursive: true });
      fs.copyFileSync(path.join(src, f), path.join(work, f));
    }
    const nm = path.join(work, "node_modules");
    fs.mkdirSync(nm);
    fs.symlinkSync(JS, path.join(nm, "onnx-protect"));
    for (const p of ["onnxruntime-web", "esbuild", "@esbuild"]) fs.symlinkSync(path.join(JS, "node_modules", p), path.join(nm, p));
    const t0 = Date.now();
    execFileSync(process.execPath, ["build.mjs"], { cwd: work, stdio: ["ignore", "pipe", "pipe"] });
    const built = Date.now() - t0;
    const pub = path.join(work, "public");
    // The model: a protected vector with two external data files, and its key.
    const vec = path.join(VECTORS, "external_data_v2_ctr");
    for (const f of fs.readdirSync(path.join(vec, "protected"))) fs.copyFileSync(path.join(vec, "protected", f), path.join(pub, f));
    const key = fs.readFileSync(path.join(vec, "key.hex"), "utf8");
    // What the page must show: onnxruntime-node on the plain model, the page's test input.
    const plain = await ortNode.InferenceSession.create(path.join(vec, "original/model.onnx"));
    const shape = plain.inputMetadata[0].shape.map((d) => (typeof d === "number" ? d : 1));
    const x = Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, (_, k) => Math.sin(k));
    const want = Array.from((await plain.run({ [plain.inputNames[0]]: new ortNode.Tensor("float32", x, shape) }))[plain.outputNames[0]].data);

    const missed = [];
    server = await serveDir(pub, missed);
    const page = await browser.newPage();
    page.on("pageerror", (e) => lines.push(`recipe page error: ${e.message}`));
    await page.goto(`http://127.0.0.1:${server.address().port}/`);
    const runWith = async (k) => {
      await page.evaluate(() => { document.getElementById("out").textContent = ""; });
      await page.fill("#key", k);
      await page.click("#run");
      await page.waitForFunction(() => document.getElementById("out").textContent !== "", null, { timeout: 60000 });
      return JSON.parse(await page.textContent("#out"));
    };
    const r = await runWith(key);
    let worst = Infinity;
    if (r.output?.length === want.length) {
      worst = 0;
      for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(r.output[i] - want[i]) / Math.max(1, Math.abs(want[i])));
    }
    check(worst <= 1e-4, `built by build.mjs (esbuild) in ${built} ms; the page's outputs ${r.error ? `${r.error}: ${r.message}` : `within ${worst.toExponential(1)} of onnxruntime-node`}`);
    const wrong = await runWith("00".repeat(32));
    check(wrong.error === "wrong_key", `another key: ${wrong.error}`);
    const w = fs.readFileSync(path.join(pub, "weights.bin"));
    w[w.length >> 1] ^= 1;
    fs.writeFileSync(path.join(pub, "weights.bin"), w);
    const changed = await runWith(key);
    check(changed.error === "modified", `a changed byte of weights.bin: ${changed.error}`);
    // Everything the page asked for was in public/: one script, the .wasm file, the model.
    check(missed.length === 0, `files asked for that public/ has not: ${missed.join(", ") || "none"}`);
    await page.close();
  } catch (e) {
    check(false, `${e.message}${e.stderr ? `\n${e.stderr}` : ""}`);
  } finally {
    server?.close();
    fs.rmSync(work, { recursive: true, force: true });
  }
  return { ok, lines };
}
