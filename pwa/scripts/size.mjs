// First-load size of the upload app: gzip size of every JS and CSS file dist/index.html loads
// (scripts, module preloads, stylesheets, and their static imports). Fails over the budget.
// Usage: node scripts/size.mjs [page.html]   (default index.html; run `npm run build` first)
import { existsSync, readFileSync } from 'node:fs'
import { dirname, join, normalize, relative } from 'node:path'
import { fileURLToPath } from 'node:url'
import { gzipSync } from 'node:zlib'

const BUDGET = 250 * 1024 // bytes, gzip, for the upload app
const dist = join(dirname(fileURLToPath(import.meta.url)), '..', 'dist')
const page = process.argv[2] ?? 'index.html'
const htmlPath = join(dist, page)
if (!existsSync(htmlPath)) {
  console.error(`${relative(process.cwd(), htmlPath)} not found: run \`npm run build\` first.`)
  process.exit(2)
}
const html = readFileSync(htmlPath, 'utf8')
const refs = new Set()
for (const m of html.matchAll(/<script[^>]*\ssrc="([^"]+)"/g)) refs.add(m[1])
for (const m of html.matchAll(/<link[^>]*rel="(?:modulepreload|stylesheet)"[^>]*href="([^"]+)"/g)) refs.add(m[1])
for (const m of html.matchAll(/<link[^>]*href="([^"]+)"[^>]*rel="(?:modulepreload|stylesheet)"/g)) refs.add(m[1])

const files = new Map()
const queue = [...refs].filter((r) => !/^https?:/.test(r)).map((r) => normalize(join(dist, r)))
while (queue.length) {
  const f = queue.shift()
  if (files.has(f) || !existsSync(f)) continue
  const buf = readFileSync(f)
  files.set(f, buf)
  if (f.endsWith('.js')) {
    // static imports between chunks: import"./x.js" / from"./x.js" (not dynamic import())
    for (const m of buf.toString('utf8').matchAll(/(?:^|[;\s}])(?:import|from)\s*["'](\.\/[^"']+\.js)["']/g)) {
      queue.push(normalize(join(dirname(f), m[1])))
    }
  }
}

const kb = (n) => `${(n / 1024).toFixed(1)} KiB`
const rows = [...files].map(([f, buf]) => ({ file: relative(dist, f), raw: buf.length, gzip: gzipSync(buf, { level: 9 }).length }))
rows.sort((a, b) => b.gzip - a.gzip)
const total = rows.reduce((n, r) => ({ raw: n.raw + r.raw, gzip: n.gzip + r.gzip }), { raw: 0, gzip: 0 })
const w = Math.max(20, ...rows.map((r) => r.file.length))
const line = (a, b, c) => `${a.padEnd(w)}  ${b.padStart(11)}  ${c.padStart(11)}`
console.log(`First load of ${page}\n`)
console.log(line('file', 'raw', 'gzip'))
console.log('-'.repeat(w + 26))
for (const r of rows) console.log(line(r.file, kb(r.raw), kb(r.gzip)))
console.log('-'.repeat(w + 26))
console.log(line('total', kb(total.raw), kb(total.gzip)))
console.log(`\nbudget ${kb(BUDGET)} gzip: ${total.gzip <= BUDGET ? 'OK' : 'OVER BUDGET'}`)
if (total.gzip > BUDGET) process.exit(1)
