import { spawn } from 'node:child_process'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import { HOST, nginxBinary, nginxConfig, proveForwardAuth, stop, type GatewayUnderTest } from './gateway-proof.ts'

/** The nginx server of docs/gateways.md: /api/ to authgate, everything else behind auth_request. */
function serverBlock (port: number, authgate: number, upstream: number): string {
  const identity = [['user_id', 'User-Id'], ['username', 'Username'], ['email', 'Email'], ['session_id', 'Session-Id']]
  return `
    listen ${HOST}:${port};
    location /api/ {
      proxy_pass http://${HOST}:${authgate};
    }
    location / {
      auth_request /_auth;
${identity.map(([v, h]) => `      auth_request_set $auth_${v} $upstream_http_x_auth_${v};
      proxy_set_header X-Auth-${h} $auth_${v};`).join('\n')}
      proxy_pass http://${HOST}:${upstream};
    }
    location = /_auth {
      internal;
      proxy_pass http://${HOST}:${authgate}/api/auth/check;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header Authorization $http_authorization;
      proxy_set_header Cookie $http_cookie;
    }`
}

const nginx: GatewayUnderTest = {
  name: 'nginx',
  async start (dir, port, authgate, upstream) {
    const conf = join(dir, 'nginx.conf')
    const errorLog = join(dir, 'error.log')
    await writeFile(conf, nginxConfig(dir, serverBlock(port, authgate, upstream)))
    const child = spawn(nginxBinary as string, ['-p', dir, '-c', conf, '-e', errorLog], { stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    child.stderr?.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
    return {
      child,
      // Fast shutdown: the master stops its worker, then exits.
      stop: () => stop(child, 'SIGTERM'),
      output: async () => stderr + await readFile(errorLog, 'utf8').catch(() => '')
    }
  }
}

t.test('nginx auth_request in front of /api/auth/check', { skip: nginxBinary === undefined && 'no nginx binary on this machine (CI installs Debian\'s nginx)' }, async (t) => {
  await proveForwardAuth(t, nginx)
})
