import type { ServerResponse } from 'node:http';
import type { Dispatcher } from 'undici';
import { describe, expect, it, vi } from 'vitest';
import { UpstreamCall, type AttemptOwner } from '../../src/upstream-call.js';

describe('UpstreamCall', () => {
  it('a sender gone before undici started the request (it waited for a connection): the request is aborted as it starts, never sent', () => {
    const owner = { bodySent: true, holdingAnswer: false } as unknown as AttemptOwner;
    const call = new UpstreamCall({} as ServerResponse, owner, undefined, false, 30_000);
    const gone = Object.assign(new Error('the sender went away'), { code: 'UND_ERR_ABORTED' });
    call.abort(gone); // no controller yet: kept for the start
    const controller = { abort: vi.fn(), pause: vi.fn(), resume: vi.fn() } as unknown as Dispatcher.DispatchController;
    call.onRequestStart(controller);
    expect(controller.abort).toHaveBeenCalledWith(gone);
  });
});
