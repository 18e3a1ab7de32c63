import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import { HOST, proveForwardAuth, stop, type GatewayUnderTest } from './gateway-proof.ts'

// Debian's `caddy` package.
const caddyBinary = '/usr/bin/caddy'
const hasCaddy = existsSync(caddyBinary)

const identity = ['X-Auth-User-Id', 'X-Auth-Username', 'X-Auth-Email', 'X-Auth-Session-Id']

/** The Caddyfile of docs/gateways.md: /api/* to authgate, everything else behind forward_auth. */
function caddyfile (dir: string, port: number, authgate: number, upstream: number): string {
  // No `persist_config off`: Caddy 2.6 (Debian bookworm) does not know it; its autosave.json goes to
  // XDG_CONFIG_HOME, inside the temporary folder.
  return `{
  admin off
  auto_https off
  storage file_system ${join(dir, 'data')}
}
http://${HOST}:${port} {
  # Headers spelt with underscores (X_Auth_User_Id) are the real ones to WSGI, CGI and PHP, and
  # copy_headers replaces only the spelling it copies: drop every one of them.
  request_header -*_*
  handle /api/* {
    reverse_proxy ${HOST}:${authgate}
  }
  handle {
    forward_auth ${HOST}:${authgate} {
      uri /api/auth/check
      copy_headers ${identity.join(' ')}
    }
    reverse_proxy ${HOST}:${upstream}
  }
}
`
}

const caddy: GatewayUnderTest = {
  name: 'caddy',
  async start (dir, port, authgate, upstream) {
    const conf = join(dir, 'Caddyfile')
    await writeFile(conf, caddyfile(dir, port, authgate, upstream))
    // Caddy keeps its data and config under HOME / XDG_*: all inside the temporary folder.
    const env = { ...process.env, HOME: dir, XDG_DATA_HOME: join(dir, 'xdg-data'), XDG_CONFIG_HOME: join(dir, 'xdg-config') }
    const child = spawn(caddyBinary, ['run', '--config', conf, '--adapter', 'caddyfile'], { env, stdio: ['ignore', 'pipe', 'pipe'] })
    let output = ''
    const collect = (chunk: Buffer): void => { output += chunk.toString() }
    child.stdout?.on('data', collect)
    child.stderr?.on('data', collect)
    return {
      child,
      // Graceful stop on SIGTERM, SIGKILL after WAIT_MS.
      stop: () => stop(child, 'SIGTERM'),
      output: async () => output
    }
  }
}

t.test('Caddy forward_auth in front of /api/auth/check', { skip: !hasCaddy && `no caddy binary at ${caddyBinary} (CI installs Debian's caddy)` }, async (t) => {
  await proveForwardAuth(t, caddy)
})
