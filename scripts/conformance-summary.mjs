// Summarise a cache-tests result file against the suite's kinds and other caches' results.
import fs from 'fs'
import tests from './tests/index.mjs'
import surrogate from './tests/surrogate-control.mjs'
tests.push(surrogate)
const [ours, ...others] = process.argv.slice(2)
const load = f => JSON.parse(fs.readFileSync(f, 'utf8'))
const r = load(ours)
const o = others.map(f => [f.split('/').pop().replace('.json', ''), load(f)])
const byId = {}
for (const s of tests) for (const t of s.tests) byId[t.id] = { ...t, suite: s.id }
function verdict (res, t, results, depth = 0) {
  if (res === undefined) return 'untested'
  if (depth < 5 && t.depends_on) {
    for (const d of t.depends_on) {
      const v = verdict(results[d], byId[d], results, depth + 1)
      if (!['pass', 'yes'].includes(v)) return 'dep_fail'
    }
  }
  if (Array.isArray(res) && res[0] === 'Setup') return 'setup_fail'
  if (Array.isArray(res) && res[0] !== 'Assertion') return 'harness_fail'
  const kind = t.kind || 'required'
  if (kind === 'check') return res === true ? 'yes' : 'no'
  if (res === true) return 'pass'
  return kind === 'optimal' ? 'optional_fail' : 'fail'
}
const counts = {}
const rows = []
for (const id of Object.keys(byId)) {
  const t = byId[id]
  if (t.browser_only) continue
  const v = verdict(r[id], t, r)
  counts[v] = (counts[v] || 0) + 1
  if (['fail', 'optional_fail', 'harness_fail', 'setup_fail'].includes(v)) {
    const theirs = o.map(([n, res]) => `${n}=${verdict(res[id], t, res)}`).join(' ')
    const msg = Array.isArray(r[id]) ? r[id][1] : ''
    rows.push(`${v.padEnd(13)} ${id}  [${theirs}]\n              ${msg}`)
  }
}
const summary = (name, res) => {
  const c = {}
  for (const id of Object.keys(byId)) {
    if (byId[id].browser_only) continue
    const v = verdict(res[id], byId[id], res); c[v] = (c[v] || 0) + 1
  }
  return `${name}: ` + Object.entries(c).sort().map(([k, n]) => `${k} ${n}`).join(', ')
}
console.log(summary('verge', r))
for (const [n, res] of o) console.log(summary(n, res))
console.log(rows.join('\n'))
