// Builds the verifier page into one self-contained HTML file: the bundle of src/main.js and the npm
// libraries it imports (versions pinned in package-lock.json), inlined under a Content-Security-Policy
// that allows exactly that script and no network. Reproducible: the same lock file gives the same bytes
// (no timestamps, no absolute paths, no source maps). `node build.mjs [OUT]`, default
// ../gateway/data/verifier.html (shipped in the Python package; `battery-gateway trust-list` fills its
// trust-list slot).
import { build } from "esbuild";
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = process.argv[2] || join(here, "..", "gateway", "data", "verifier.html");
const result = await build({
  entryPoints: [join(here, "src", "main.js")], bundle: true, minify: true, format: "iife", target: "es2020",
  platform: "browser", write: false, legalComments: "eof", charset: "utf8", absWorkingDir: here,
  define: { "process.env.NODE_ENV": '"production"' }, logLevel: "warning",
});
const script = result.outputFiles[0].text.replaceAll("</script", "<\\/script").trimEnd();
const hash = "sha256-" + createHash("sha256").update(script, "utf8").digest("base64");
const deps = Object.keys(JSON.parse(readFileSync(join(here, "package.json"), "utf8")).dependencies)
  .filter((name) => name !== "esbuild")
  .map((name) => {
    const pkg = JSON.parse(readFileSync(join(here, "node_modules", name, "package.json"), "utf8"));
    return `${pkg.name} ${pkg.version} (${pkg.license})`;
  });
const notice = `Built by verifier/build.mjs from battery-gateway's verifier/src and ${deps.join(", ")}. `
  + "Their licences are in their npm packages; this page is Apache-2.0.";
const page = readFileSync(join(here, "src", "page.html"), "utf8")
  .replace("{{SCRIPT_HASH}}", hash).replace("{{NOTICE}}", notice).replace("{{SCRIPT}}", () => script);
writeFileSync(out, page);
console.log(`${out}: ${page.length} bytes, script ${hash}`);
