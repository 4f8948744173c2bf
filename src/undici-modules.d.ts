/**
 * Types for the undici modules the sidecar loads directly instead of undici's index (see
 * `dispatcher.ts`): each class is the one the index exports under the same name, and `api` is what the
 * index mixes into `Dispatcher.prototype`. `test/unit/dispatcher.test.ts` checks both, so an undici
 * release that moves them fails the tests rather than the sidecar.
 */
declare module 'undici/lib/dispatcher/agent.js' {
  import type { Agent } from 'undici';
  const AgentClass: typeof Agent;
  export default AgentClass;
}

declare module 'undici/lib/dispatcher/env-http-proxy-agent.js' {
  import type { EnvHttpProxyAgent } from 'undici';
  const EnvHttpProxyAgentClass: typeof EnvHttpProxyAgent;
  export default EnvHttpProxyAgentClass;
}

declare module 'undici/lib/dispatcher/pool.js' {
  import type { Pool } from 'undici';
  const PoolClass: typeof Pool;
  export default PoolClass;
}

declare module 'undici/lib/dispatcher/dispatcher.js' {
  import type { Dispatcher } from 'undici';
  const DispatcherClass: typeof Dispatcher;
  export default DispatcherClass;
}

/** `request`, `stream`, `pipeline`, `upgrade`, `connect`: the methods undici's index adds to `Dispatcher.prototype`. */
declare module 'undici/lib/api/index.js' {
  const api: Record<'request' | 'stream' | 'pipeline' | 'upgrade' | 'connect', (...args: never[]) => unknown>;
  export default api;
}
