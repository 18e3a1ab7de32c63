import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import { pruneTokens } from '../src/services/cleanup.ts'

/**
 * Prunes ended sessions and expired refresh tokens every AUTH_PRUNE_INTERVAL, one replica at a
 * time, and audit events older than AUDIT_RETENTION.
 */
async function cleanupPlugin (fastify: FastifyInstance): Promise<void> {
  const { config, db, clock, audit } = fastify
  let running: Promise<void> | undefined
  const prune = async (): Promise<void> => {
    try {
      const flushed = await pruneTokens(db, config, clock)
      if (flushed !== undefined && flushed.sessions + flushed.refreshTokens > 0) fastify.log.info({ flushed }, 'pruned ended sessions')
      const events = await audit.prune(config.auditRetentionS)
      if (events > 0) fastify.log.info({ events }, 'pruned old audit events')
    } catch (error) {
      fastify.log.warn({ err: error }, 'pruning ended sessions or old audit events failed')
    }
  }
  const timer = setInterval(() => { running ??= prune().finally(() => { running = undefined }) }, config.pruneIntervalS * 1000).unref()
  fastify.addHook('onClose', async () => {
    clearInterval(timer)
    await running
  })
}

export default fp(cleanupPlugin, { name: 'cleanup', dependencies: ['config', 'db', 'audit'] })
