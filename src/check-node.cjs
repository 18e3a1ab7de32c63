'use strict'
// Run before `npm start`, `npm test` and the CLI scripts, by any Node.js: the sources are
// TypeScript, which Node.js runs directly from 22.18 on, and a production dependency may ask
// for more (fastify-metrics asks for 22.19): package.json's engines.node says the floor, and
// test/node-version.test.ts holds it to the dependencies. Plain CommonJS, so an old Node reads
// it and says what to install instead of failing on "Unknown file extension .ts".
const { engines } = require('../package.json')
const floor = /^>=(\d+)\.(\d+)(?:\.\d+)?$/.exec(engines.node)
if (floor === null) throw new Error(`package.json engines.node must be ">=MAJOR.MINOR", not ${JSON.stringify(engines.node)}`)
const [major, minor] = process.versions.node.split('.').map(Number)
const [needMajor, needMinor] = [Number(floor[1]), Number(floor[2])]
if (major < needMajor || (major === needMajor && minor < needMinor)) {
  console.error(`authgate needs Node.js ${needMajor}.${needMinor} or later (24 LTS recommended); this is ${process.version} at ${process.execPath}.
Install Node.js 24 (nvm install, or fnm use: both read .nvmrc) and run the command again.`)
  process.exit(1)
}
