/**
 * A preload (`node --import`) for a CLI child that makes it see itself as PID 1, as node runs in the image and in a
 * Kubernetes Job: what the CLI does with a stop signal there is tested without a PID namespace of its own.
 */
Object.defineProperty(process, 'pid', { value: 1 });
