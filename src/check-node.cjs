'use strict'
// Run before `npm start`, `npm test` and the CLI scripts, by any Node.js: the sources are
// TypeScript that only Node.js 22.18 and later run directly. Plain CommonJS, so an old Node
// reads it and says what to install instead of failing on "Unknown file extension .ts".
const [major, minor] = process.versions.node.split('.').map(Number)
if (major < 22 || (major === 22 && minor < 18)) {
  console.error(`authgate needs Node.js 22.18 or later (24 LTS recommended); this is ${process.version} at ${process.execPath}.
Install Node.js 24 (nvm install, or fnm use: both read .nvmrc) and run the command again.`)
  process.exit(1)
}
