// Summarise a cache-tests result file the way the suite grades it, next to the suite's published
// results for reverse proxies and CDNs.
//
//   node conformance-summary.mjs SUITE_DIR RESULTS_JSON [LABEL]
//
// Grading is the suite's own: each verdict comes from determineTestResult() in
// test-engine/lib/results.mjs (the function cache-tests.fyi uses to draw each cell), with
// dependencies honoured, so a test whose depends_on did not pass is not a pass. The site draws
// no totals, so the totals here are: "graded" = tests of kind required or optimal (kind "check"
// only records behaviour and is never right or wrong), leaving out browser_only tests, which the
// command-line client never runs; a test counts as passed when its verdict is "pass". Setup
// failures, harness failures, retries, dependency failures and untested count as not passed.
import fs from 'fs'
import path from 'path'
import { pathToFileURL } from 'url'

const [suiteDir, resultsFile, label = 'verge'] = process.argv.slice(2)
if (!suiteDir || !resultsFile) {
  console.error('usage: conformance-summary.mjs SUITE_DIR RESULTS_JSON [LABEL]')
  process.exit(2)
}
const suiteModule = rel => import(pathToFileURL(path.join(suiteDir, rel)).href)
const testSuites = (await suiteModule('tests/index.mjs')).default
const { determineTestResult, resultTypes } = await suiteModule('test-engine/lib/results.mjs')
const published = (await suiteModule('results/index.mjs')).default
const load = file => JSON.parse(fs.readFileSync(file, 'utf8'))

const verdictName = new Map(Object.entries(resultTypes).map(([name, type]) => [type, name]))
const verdict = (results, id) => verdictName.get(determineTestResult(testSuites, id, results))
const kindOf = test => test.kind || 'required'

const graded = []
for (const suite of testSuites) {
  for (const test of suite.tests) {
    if (test.browser_only === true) continue
    graded.push({ suite, test })
  }
}

function tally (results) {
  const t = { passed: 0, total: 0, reqPassed: 0, reqTotal: 0, optPassed: 0, optTotal: 0, verdicts: {} }
  for (const { test } of graded) {
    const v = verdict(results, test.id)
    t.verdicts[v] = (t.verdicts[v] || 0) + 1
    const kind = kindOf(test)
    if (kind === 'check') continue
    t.total++
    if (v === 'pass') t.passed++
    if (kind === 'required') {
      t.reqTotal++
      if (v === 'pass') t.reqPassed++
    } else {
      t.optTotal++
      if (v === 'pass') t.optPassed++
    }
  }
  return t
}

const ours = { name: label, version: 'this run', results: load(resultsFile) }
const peers = published
  .filter(item => item.type !== 'browser')
  .map(item => ({ ...item, results: load(path.join(suiteDir, 'results', item.file)) }))
const rows = [ours, ...peers].map(impl => ({ ...impl, t: tally(impl.results) }))
rows.sort((a, b) => b.t.passed - a.t.passed || b.t.reqPassed - a.t.reqPassed)

const source = fs.existsSync(path.join(suiteDir, '.verge-source'))
  ? fs.readFileSync(path.join(suiteDir, '.verge-source'), 'utf8').trim()
  : suiteDir
const out = []
out.push(`cache-tests suite: ${source}`)
out.push('graded = required + optimal tests (browser-only left out); passed = the suite\'s "pass" verdict,')
out.push('dependencies honoured. Other columns count verdicts over graded tests and checks together.')
out.push('')
const header = ['cache', 'version', 'graded', 'required', 'optimal', 'fail', 'opt-fail', 'setup', 'dep', 'harness', 'retry', 'untested', 'check y/n']
const n = (t, v) => String(t.verdicts[v] || 0)
const table = rows.map(({ name, version, t }) => [
  name, version,
  `${t.passed}/${t.total}`, `${t.reqPassed}/${t.reqTotal}`, `${t.optPassed}/${t.optTotal}`,
  n(t, 'fail'), n(t, 'optional_fail'), n(t, 'setup_fail'), n(t, 'dependency_fail'),
  n(t, 'harness_fail'), n(t, 'retry'), n(t, 'untested'), `${n(t, 'yes')}/${n(t, 'no')}`
])
const widths = header.map((h, i) => Math.max(h.length, ...table.map(r => r[i].length)))
const line = cells => cells.map((c, i) => (i < 2 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ').trimEnd()
out.push(line(header))
for (const r of table) out.push(line(r))

out.push('')
out.push(`Every ${label} result that is not a pass (checks answered yes/no are not listed), by test group;`)
out.push('"passed by" names the published caches whose verdict is pass ("yes from": whose check answered yes).')
const symbol = Object.fromEntries(Object.entries(resultTypes).map(([name, type]) => [name, type[2]]))
let listed = 0
for (const suite of testSuites) {
  const lines = []
  for (const test of suite.tests) {
    if (test.browser_only === true) continue
    const v = verdict(ours.results, test.id)
    if (['pass', 'yes', 'no'].includes(v)) continue
    listed++
    const raw = ours.results[test.id]
    const message = Array.isArray(raw) ? raw.slice(0, 2).join(': ') : ''
    const good = kindOf(test) === 'check' ? 'yes' : 'pass'
    const passers = peers.filter(p => verdict(p.results, test.id) === good).map(p => p.name)
    lines.push(`  ${symbol[v]} ${v.padEnd(15)} ${kindOf(test).padEnd(8)} ${test.id} - ${test.name}`)
    if (message) lines.push(`      ${message}`)
    if (test.depends_on && v === 'dependency_fail') lines.push(`      depends on: ${test.depends_on.join(', ')}`)
    lines.push(`      ${good === 'yes' ? 'yes from' : 'passed by'}: ${passers.length ? passers.join(', ') : 'none'}`)
  }
  if (lines.length) {
    out.push('')
    out.push(`${suite.name} [${suite.id}]`)
    out.push(...lines)
  }
}
if (listed === 0) out.push('  (none)')
console.log(out.join('\n'))
