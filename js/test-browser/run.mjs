// The browser test: headless Chromium (the system's, driven by playwright-core; no browser
// download) loads a page served on localhost that fetches protected models, decrypts them
// and runs them in onnxruntime-web (WebAssembly); outputs are compared with onnxruntime-node
// on the plain models; then the bundler recipe of docs/js.md (recipe.mjs). Skips, with a
// message, where Chromium or the binary is missing.
import fs from "node:fs";
import http from "node:http";
import path from "node:path";

import * as ortNode from "onnxruntime-node";
import { chromium } from "playwright-core";

import { binary, issueLicence, publisher, readNpy, ROOT, run, tempDir, WINDOW } from "../test/util.mjs";
import { recipeCase } from "./recipe.mjs";

const JS = path.join(ROOT, "js");
const CHROMIUM = process.env.CHROMIUM ?? ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"].find((p) => fs.existsSync(p));
const BIN = binary();
if (!CHROMIUM || !BIN) {
  console.log(`SKIP browser test: ${!CHROMIUM ? "no Chromium (apt-get install chromium, or set CHROMIUM)" : "no onnx-protect binary"}`);
  process.exit(0);
}

const work = tempDir();
const files = new Map(); // URL path -> file
const TYPES = { ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm", ".html": "text/html", ".json": "application/json" };

function serve(req, res) {
  const url = decodeURIComponent(new URL(req.url, "http://x").pathname);
  // The files the cases name, and what js/dist and js/node_modules hold (nothing above them).
  let file = files.get(url);
  for (const [prefix, dir] of [["/js/dist/", path.join(JS, "dist")], ["/node_modules/", path.join(JS, "node_modules")]]) {
    if (!file && url.startsWith(prefix)) {
      const f = path.resolve(dir, url.slice(prefix.length));
      if (f.startsWith(dir + path.sep)) file = f;
    }
  }
  if (!file || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, { "content-type": TYPES[path.extname(file)] ?? "application/octet-stream" });
  fs.createReadStream(file).pipe(res);
}

async function cases() {
  const key = path.join(work, "model.key");
  run(BIN, ["keygen", "-o", key, "-q"]);
  files.set("/model.key", key);
  const zoo = path.join(ROOT, "fixtures/zoo");
  const out = [];
  for (const [name, src, xfile, policy] of [
    ["digits-vit", path.join(zoo, "digits/vit.onnx"), path.join(zoo, "digits/ref_x.npy"), []],
    ["vowels-lstm", path.join(zoo, "vowels/lstm.onnx"), path.join(zoo, "vowels/ref_x.npy"), ["--coefficient", "*=1"]],
    ["osuleaf-convmixer", path.join(zoo, "osuleaf/convmixer.onnx"), path.join(zoo, "osuleaf/ref_x.npy"), ["--mode", "*=fp"]],
  ]) {
    const dir = path.join(work, name);
    fs.mkdirSync(dir);
    run(BIN, ["encrypt", src, "-o", path.join(dir, "model.onnx"), "--key-file", key, "-q", ...policy]);
    files.set(`/${name}/model.onnx`, path.join(dir, "model.onnx"));
    files.set(`/${name}/original.onnx`, src);
    const x = readNpy(xfile);
    const plain = await ortNode.InferenceSession.create(src);
    const want = (await plain.run({ [plain.inputNames[0]]: new ortNode.Tensor("float32", x.data, x.shape) }))[plain.outputNames[0]].data;
    out.push({ name, c: { model: `/${name}/model.onnx`, original: `/${name}/original.onnx`, key: "/model.key", input: { data: Array.from(x.data), shape: x.shape } }, want });
  }
  // A label-locked model that needs a licence (made by the binary), its high-water mark kept
  // in the page's localStorage.
  {
    const name = "digits-cnn-locked-licensed";
    const dir = path.join(work, name);
    fs.mkdirSync(dir);
    const src = path.join(zoo, "digits/cnn.onnx");
    const pub = publisher(BIN, dir, "pub.sk");
    run(BIN, ["encrypt", src, "-o", path.join(dir, "model.onnx"), "--key-file", key, "-q", "--lock-outputs", "--licence-authority", pub.authority, "--model-id", "cnn"]);
    issueLicence(BIN, dir, pub.sk, "model.licence", ["--model", "id:cnn", "--recipient", "any", ...WINDOW]);
    files.set(`/${name}/model.onnx`, path.join(dir, "model.onnx"));
    files.set(`/${name}/original.onnx`, src);
    files.set(`/${name}/model.licence`, path.join(dir, "model.licence"));
    const x = readNpy(path.join(zoo, "digits/ref_x.npy"));
    const plain = await ortNode.InferenceSession.create(src);
    const want = (await plain.run({ [plain.inputNames[0]]: new ortNode.Tensor("float32", x.data, x.shape) }))[plain.outputNames[0]].data;
    out.push({ name, c: { model: `/${name}/model.onnx`, original: `/${name}/original.onnx`, key: "/model.key", licence: `/${name}/model.licence`, input: { data: Array.from(x.data), shape: x.shape } }, want, licensed: true });
  }
  // A model with external data, protected into another folder and into its own (where the
  // protected files get names of their own and the header records the original ones).
  const srcDir = path.join(ROOT, "fixtures/models/external_data");
  const src = path.join(srcDir, "model.onnx");
  const plain = await ortNode.InferenceSession.create(src);
  const meta = plain.inputMetadata[0];
  const shape = meta.shape.map((s) => (typeof s === "number" ? s : 1));
  const data = Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, (_, k) => Math.sin(k));
  const want = (await plain.run({ [plain.inputNames[0]]: new ortNode.Tensor("float32", data, shape) }))[plain.outputNames[0]].data;
  for (const [name, sameFolder] of [["external", false], ["external-same-folder", true]]) {
    const dir = path.join(work, name);
    fs.mkdirSync(dir);
    let input = src, output = path.join(dir, "model.onnx");
    if (sameFolder) {
      for (const f of ["model.onnx", "weights.bin", "extra.bin"]) fs.copyFileSync(path.join(srcDir, f), path.join(dir, f));
      input = path.join(dir, "model.onnx");
      output = path.join(dir, "model.protected.onnx");
    }
    const before = new Set(fs.readdirSync(dir));
    run(BIN, ["encrypt", input, "-o", output, "--key-file", key, "-q", "--coefficient", "*=1"]);
    files.set(`/${name}/model.onnx`, output);
    files.set(`/${name}/original.onnx`, src);
    const external = {};
    for (const f of fs.readdirSync(dir).filter((f) => !before.has(f) && f !== path.basename(output))) {
      files.set(`/${name}/${f}`, path.join(dir, f));
      external[f] = `/${name}/${f}`;
    }
    out.push({ name, c: { model: `/${name}/model.onnx`, original: `/${name}/original.onnx`, key: "/model.key", external, input: { data: Array.from(data), shape } }, want, names: ["weights.bin", "extra.bin"] });
  }
  return out;
}

files.set("/", path.join(JS, "test-browser/page.html"));
const server = http.createServer(serve);
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const port = server.address().port;
let failed = 0;
const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
  // playwright-core starts it with a new, empty profile of its own.
});
try {
  const page = await browser.newPage();
  page.on("pageerror", (e) => console.log(`page error: ${e.message}`));
  await page.goto(`http://127.0.0.1:${port}/`);
  await page.waitForFunction(() => window.ready === true, null, { timeout: 60000 });
  for (const { name, c, want, names, licensed } of await cases()) {
    const r = await page.evaluate((c) => window.runCase(c), c);
    let worst = 0;
    for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(r.output[i] - want[i]) / Math.max(1, Math.abs(want[i])));
    // The external data files come back under the original model's names.
    const sameNames = !names || r.names.join("\0") === names.join("\0");
    // A licensed model: refused without its licence and with the page's clock set back, and
    // the high-water mark recorded in localStorage.
    const l = r.licenceChecks;
    const licenceOk = !licensed || (l?.missing === "licence_missing" && l?.setBack === "licence_clock" && /^20[0-9]{2}-/.test(l?.mark ?? ""));
    const ok = r.sameBytes && sameNames && r.output.length === want.length && worst <= 1e-4 && r.refused === "modified" && licenceOk;
    if (!ok) failed++;
    const lic = licensed ? `, without the licence ${l?.missing}, clock set back ${l?.setBack}, high-water mark ${l?.mark}` : "";
    console.log(`${ok ? "ok" : "FAIL"} ${name}: decrypted byte for byte ${r.sameBytes}${names ? `, side files ${r.names.join(", ")}` : ""}, outputs within ${worst.toExponential(1)} of onnxruntime-node, a changed byte ${r.refused ?? "accepted"}${lic}`);
  }
  // The bundler recipe of docs/js.md (js/examples/browser), built and loaded as a user would.
  const recipe = await recipeCase(browser);
  for (const line of recipe.lines) console.log(line);
  if (!recipe.ok) failed++;
} finally {
  await browser.close();
  server.close();
  fs.rmSync(work, { recursive: true, force: true });
}
if (failed) {
  console.log(`${failed} browser case(s) failed`);
  process.exit(1);
}
console.log("browser: every case passed");
