// test/examples/readme-check.mjs [FILE.md...]: the manual shows the
// examples as they are.  In README.md and every doc/**/*.md (or the files
// given), a line
//
//   <!-- example: test/examples/webhook.js -->
//   <!-- example: test/examples/gateway.js#rate-limit -->
//
// must be followed (after blank lines only) by a fenced ```js block equal
// byte for byte to the file, or to its region: the lines between
// "// region NAME" and "// endregion", without those two lines.  A block
// indented in a list is compared after removing its fence's indentation.
// Every test/examples/*.js must be shown somewhere, whole or region by
// region.  Prints each problem; exits 1 if there is one.
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..');
// README.md and doc/**/*.md, or the files named on the command line.
const markdown = (dir) => readdirSync(dir, { withFileTypes: true })
  .flatMap((e) => (e.isDirectory() ? markdown(join(dir, e.name))
    : e.name.endsWith('.md') ? [join(dir, e.name)] : []));
const manual = process.argv.length > 2 ? process.argv.slice(2)
  : [join(root, 'README.md'), ...markdown(join(root, 'doc')).sort()];
const examples = readdirSync(here).filter((f) => f.endsWith('.js')).sort()
  .map((f) => relative(root, join(here, f)));
const marker = /^\s*<!-- example: (\S+?)(?:#([\w-]+))? -->\s*$/;
const problems = [];
const shown = new Set();

// The expected text of FILE or its REGION, as lines, or a problem string.
function expected(file, region) {
  let text;
  try {
    text = readFileSync(join(root, file), 'utf8');
  } catch {
    return `no such file ${file}`;
  }
  const body = text.replace(/\n$/, '').split('\n');
  if (!region) return body;
  const start = body.findIndex((l) => l.trim() === `// region ${region}`);
  if (start < 0) return `${file} has no "// region ${region}"`;
  const end = body.findIndex((l, i) => i > start && l.trim() === '// endregion');
  if (end < 0) return `${file}: region ${region} has no "// endregion"`;
  return body.slice(start + 1, end);
}

// The fenced block after line I of LINES, dedented, as lines, or a
// problem string.
function block(lines, i) {
  let j = i + 1;
  while (j < lines.length && lines[j].trim() === '') j++;
  const open = /^(\s*)```js\s*$/.exec(lines[j] ?? '');
  if (!open) return 'not followed by a ```js block';
  const indent = open[1];
  const out = [];
  for (j++; j < lines.length; j++) {
    const line = lines[j];
    if (line.trim() === '```') return out;
    if (line.trim() !== '' && !line.startsWith(indent))
      return `line ${j + 1} is indented less than its fence`;
    out.push(line.slice(indent.length));
  }
  return 'its ```js block is not closed';
}

for (const path of manual) {
  const lines = readFileSync(path, 'utf8').split('\n');
  lines.forEach((line, i) => {
    const m = marker.exec(line);
    if (!m) return;
    const [, file, region] = m;
    const where = `${relative(root, path)}:${i + 1}: ${file}${region ? `#${region}` : ''}`;
    shown.add(region ? `${file}#${region}` : file);
    const want = expected(file, region);
    const got = block(lines, i);
    if (typeof want === 'string') return problems.push(`${where}: ${want}`);
    if (typeof got === 'string') return problems.push(`${where}: ${got}`);
    const n = Math.max(want.length, got.length);
    for (let k = 0; k < n; k++) {
      if (want[k] !== got[k]) {
        return problems.push(`${where}: differs at line ${k + 1} of the block:\n` +
          `    file:   ${JSON.stringify(want[k] ?? '(end)')}\n` +
          `    manual: ${JSON.stringify(got[k] ?? '(end)')}`);
      }
    }
  });
}

// Each file is shown whole, or each of its regions is.
for (const file of examples) {
  if (shown.has(file)) continue;
  const regions = expected(file).filter((l) => /^\s*\/\/ region /.test(l))
    .map((l) => `${file}#${l.trim().slice('// region '.length)}`);
  for (const m of regions.length ? regions : [file]) {
    if (!shown.has(m)) problems.push(`missing: insert <!-- example: ${m} --> before a \`\`\`js block`);
  }
}

for (const p of problems) console.log(p);
console.log(`manual examples: ${shown.size} marker(s) in ${manual.length} files for ${examples.length} example files, ${problems.length} problem(s)`);
process.exit(problems.length ? 1 : 0);
