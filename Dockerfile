# authgate: Node.js 24 runs the TypeScript sources directly (type stripping): no build step.
# No `# syntax=` line: builds need no frontend image from a registry, so they work offline.

FROM node:24-bookworm-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund

FROM node:24-bookworm-slim
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=3000 \
    DB_NAME=/app/data
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY package.json ./
COPY src ./src
COPY plugins ./plugins
COPY routes ./routes
COPY migrations ./migrations
# The embedded engine's data folder, for a single container without PostgreSQL: mount a volume
# here (-v authgate-data:/app/data) to keep it. No VOLUME: with PostgreSQL it stays unused, and
# a VOLUME would leave an anonymous volume behind for every container.
RUN mkdir -p /app/data && chown node:node /app/data
USER node
EXPOSE 3000
# Liveness, not readiness: a database outage must not mark every replica unhealthy (and get it
# restarted); whether to route here is the gateway's question, asked at /health/ready.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 3000) + '/health/live').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# Migrations run at start, under a lock, so replicas can start together. SIGTERM (docker stop)
# drains for SHUTDOWN_DRAIN_DELAY, lets in-flight requests finish, and exits 0.
# As `npm start`: a young generation of 8 MB semispaces keeps the RSS near 150 MB under load.
CMD ["node", "--max-semi-space-size=8", "src/start.js"]
