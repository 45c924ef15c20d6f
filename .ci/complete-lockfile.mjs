// Adds the platform-specific optional packages that `npm install` left out of
// package-lock.json because the registry it ran against did not serve them (packages for other
// operating systems and CPUs). `npm ci` refuses a lock file without them; with their `os` and
// `cpu` recorded it skips them on other platforms without fetching anything.
// Run after `npm install` whenever the lock file changes: node .ci/complete-lockfile.mjs
import { readFileSync, writeFileSync } from 'node:fs'

const file = new URL('../package-lock.json', import.meta.url)
const lock = JSON.parse(readFileSync(file, 'utf8'))

const OS = ['android', 'darwin', 'freebsd', 'linux', 'openbsd', 'openharmony', 'sunos', 'aix', 'netbsd', 'win32']
const CPU = [
  ['arm64', 'arm64'],
  ['aarch64', 'arm64'],
  ['arm-', 'arm'],
  ['arm', 'arm'],
  ['x64', 'x64'],
  ['ia32', 'ia32'],
  ['ppc64', 'ppc64'],
  ['riscv64', 'riscv64'],
  ['s390x', 's390x'],
  ['loong64', 'loong64'],
  ['wasm32', 'wasm32'],
]

function platformOf(name) {
  const base = name.split('/').pop()
  const os = OS.find((o) => base.includes(`-${o}-`) || base.endsWith(`-${o}`))
  const cpu = CPU.find(([needle]) => base.includes(needle))?.[1]
  if (!cpu) return undefined
  const entry = { cpu: [cpu] }
  if (os) entry.os = [os]
  if (base.includes('-musl')) entry.libc = ['musl']
  else if (base.includes('-gnu')) entry.libc = ['glibc']
  return entry
}

let added = 0
for (const [path, pkg] of Object.entries(lock.packages)) {
  for (const [name, spec] of Object.entries(pkg.optionalDependencies ?? {})) {
    const parentDir = path ? `${path}/node_modules/${name}` : `node_modules/${name}`
    if (lock.packages[parentDir] || lock.packages[`node_modules/${name}`]) continue
    const platform = platformOf(name)
    if (!platform || !/^\d+\.\d+\.\d+/.test(spec)) continue
    lock.packages[`node_modules/${name}`] = { version: spec, dev: pkg.dev, optional: true, ...platform }
    added++
  }
}
const sorted = Object.fromEntries(Object.entries(lock.packages).sort(([a], [b]) => a.localeCompare(b, 'en')))
lock.packages = sorted
writeFileSync(file, `${JSON.stringify(lock, null, 2)}\n`)
console.log(`added ${added} platform packages to package-lock.json`)
