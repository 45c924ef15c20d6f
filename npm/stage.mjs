// Puts into a platform package what it ships besides its package.json: the built addon, the
// ONNX Runtime library for that platform (from the pinned onnxruntime-node development
// dependency, which carries the official builds for every platform) and ONNX Runtime's notices.
//
// node npm/stage.mjs [<platform>] [--addon <path to the built .node>]
//   <platform>  a folder of npm/ (linux-x64-gnu, linux-arm64-gnu, darwin-arm64, win32-x64-msvc);
//               default: this machine's
//   --addon     default: src/inferpool.<platform>.node (where `npm run build:native` puts it), else
//               the one already in the package folder (where `napi artifacts` puts it)
import { copyFileSync, existsSync, readFileSync, statSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { parseArgs } from 'node:util'

const root = join(import.meta.dirname, '..')
const { values, positionals } = parseArgs({ options: { addon: { type: 'string' } }, allowPositionals: true })

const here = { linux: 'linux', darwin: 'darwin', win32: 'win32' }[process.platform]
const libc = process.platform === 'linux' ? '-gnu' : process.platform === 'win32' ? '-msvc' : ''
const platform = positionals[0] ?? `${here}-${process.arch}${libc}`
const dir = join(root, 'npm', platform)
if (!existsSync(join(dir, 'package.json'))) fail(`no platform package npm/${platform}`)
const manifest = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'))
const [os] = manifest.os
const [cpu] = manifest.cpu

const built = join(root, 'src', manifest.main)
const addon = values.addon ?? (existsSync(built) ? built : undefined)
if (addon) copy(addon, manifest.main)
else if (!existsSync(join(dir, manifest.main))) fail(`no built addon: run npm run build:native (or pass --addon)`)

const ortDir = dirname(createRequire(join(root, 'package.json')).resolve('onnxruntime-node/package.json'))
const ortVersion = JSON.parse(readFileSync(join(ortDir, 'package.json'), 'utf8')).version
if (ortVersion !== manifest.onnxruntime.version) {
  fail(`onnxruntime-node ${ortVersion} is installed; npm/${platform} ships ${manifest.onnxruntime.version}`)
}
copy(join(ortDir, 'bin', 'napi-v6', os, cpu, manifest.onnxruntime.library), manifest.onnxruntime.library)
copy(join(root, 'npm', 'onnxruntime', 'LICENSE'), 'ONNXRUNTIME-LICENSE')
copy(join(root, 'npm', 'onnxruntime', 'ThirdPartyNotices.txt'), 'ONNXRUNTIME-ThirdPartyNotices.txt')

const missing = manifest.files.filter((file) => !existsSync(join(dir, file)))
if (missing.length > 0) fail(`npm/${platform} still lacks ${missing.join(', ')}`)
console.log(`staged npm/${platform}: ${manifest.files.join(', ')}`)

function copy(from, name) {
  if (!existsSync(from) || !statSync(from).isFile()) fail(`missing ${from}`)
  copyFileSync(from, join(dir, name))
}

function fail(message) {
  console.error(`stage: ${message}`)
  process.exit(1)
}
