import t from 'tap'
import { ALL_ADMIN_SCOPES, build, claimsOf, login, operator } from './helper.ts'

// The discovery document against the tokens it describes (issue 26): a gateway that maps
// claims from claims_supported must find every claim a token carries there. Both engines.

t.test('claims_supported names every claim of a user\'s and a service\'s access token: aal, amr, auth_time and roles included', async (t) => {
  const app = await build(t, { env: { ROLES: 'editor' } })
  const ops = await operator(app, ALL_ADMIN_SCOPES)
  const { user } = await login(app)
  const roles = await app.inject({
    method: 'PUT',
    url: `/api/admin/users/${user.id}/roles`,
    headers: { authorization: `Bearer ${ops.token}`, 'content-type': 'application/json' },
    payload: { roles: ['editor'], reason: 'a token with roles' }
  })
  t.equal(roles.statusCode, 200, 'the user has a role')
  const userToken = claimsOf((await login(app, user)).access)
  t.match(userToken, { roles: ['editor'], aal: 'aal1', amr: ['pwd'], auth_time: Number }, 'a user\'s token with every optional claim')

  const res = await app.inject({ url: '/.well-known/openid-configuration' })
  t.equal(res.statusCode, 200)
  const supported: string[] = res.json().claims_supported
  for (const [whose, claims] of [['a user\'s', userToken], ['a service\'s', claimsOf(ops.token)]] as const) {
    t.same(Object.keys(claims).filter((claim) => !supported.includes(claim)), [], `every claim of ${whose} access token is named`)
  }
  t.same(['aal', 'amr', 'auth_time', 'roles'].filter((claim) => !supported.includes(claim)), [], 'the sign-in\'s and the roles\' claims')
  t.notOk(supported.includes('sxp'), 'not the refresh token\'s own claim, which no other service verifies')
})
