import { describe, expect, it } from 'vitest';
import { explainUpstreamAnswer, explainUpstreamError, type UpstreamAnswer, type UpstreamContext } from '../../src/check.js';

/** An opaque (non-JWT) access token: nothing in its shape tells it apart from other text. */
const OPAQUE_TOKEN = 'tok-2-dc6ed26a91f04be7b3c58e22';

const CONTEXT: UpstreamContext = {
  url: 'https://acme.it-cpi000-rt.example/http/x',
  pathGiven: true,
  csrf: 'auto',
  role: 'Custom.Sender',
  roleGranted: false,
  network: { ca: [] },
  timeoutMs: 60_000,
  connectTimeoutMs: 5_000,
  secrets: new Set([OPAQUE_TOKEN]),
};

function text(answer: UpstreamAnswer): string {
  return explainUpstreamAnswer(answer, CONTEXT)
    .map((f) => [f.message, ...f.hints].join('\n'))
    .join('\n');
}

describe('check: explaining the upstream answer', () => {
  it('never shows a piece of the token a server quoted, also an opaque one cut off by the length bound', () => {
    const body = JSON.stringify({ error: 'invalid_token', error_description: `${'x'.repeat(140)} token ${OPAQUE_TOKEN} is not valid` });
    const shown = text({ status: 401, headers: { 'content-type': 'application/json' }, body });
    expect(shown).toContain('invalid_token');
    expect(shown).not.toContain(OPAQUE_TOKEN.slice(0, 8));
  });

  it('names the role asked for in the hint of a role 403, not the default one', () => {
    const shown = text({ status: 403, headers: {}, body: '' });
    expect(shown).toContain("the sender adapter's User Role (Custom.Sender)");
  });

  it('claims the integration flow failed only with an MPL ID to show for it', () => {
    expect(text({ status: 500, headers: { 'sap_messageprocessinglogid': 'AGmplID0123456789' }, body: '' })).toContain('the integration flow failed (MPL ID AGmplID0123456789)');
    const bare = text({ status: 500, headers: { 'content-type': 'text/html' }, body: '<html>error</html>' });
    expect(bare).toContain('without an MPL ID');
    expect(bare).not.toContain('the token and role were accepted');
  });

  it('tells the connect limit from --upstream-timeout, and advises for the one that ran out', () => {
    const timeout = (code: string) => explainUpstreamError(Object.assign(new Error('timeout'), { code }), CONTEXT);
    const connecting = timeout('UND_ERR_CONNECT_TIMEOUT');
    expect(connecting.message).toContain('no connection (TCP and TLS) within 5000 ms (UND_ERR_CONNECT_TIMEOUT)');
    expect(connecting.hints.join('\n')).not.toContain('--upstream-timeout');
    const answering = timeout('UND_ERR_HEADERS_TIMEOUT');
    expect(answering.message).toContain('no answer within 60000 ms (UND_ERR_HEADERS_TIMEOUT)');
    expect(answering.hints.join('\n')).toContain('--upstream-timeout');
  });
});
