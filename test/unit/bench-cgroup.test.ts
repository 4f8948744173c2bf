import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { checkCgroupDir, inCgroup, parseCgroupMemory, readCgroupMemory } from '../../bench/lib/cgroup.js';

const dirs: string[] = [];
const scratch = (): string => {
  const dir = mkdtempSync(join(tmpdir(), 'bench-cgroup-'));
  dirs.push(dir);
  return dir;
};
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

describe('bench cgroup (soak --cgroup)', () => {
  it('reads cgroup v2 files', () => {
    expect(parseCgroupMemory({ max: '201326592\n', peak: '120586240\n', events: 'low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n' })).toEqual({
      limitBytes: 201326592,
      peakBytes: 120586240,
      oomKills: 1,
    });
    expect(parseCgroupMemory({ max: 'max\n', peak: '5\n', events: 'oom_kill 0\n' })).toEqual({ limitBytes: undefined, peakBytes: 5, oomKills: 0 });
  });

  it('reads cgroup v1 files, "no limit" included', () => {
    const oomControl = 'oom_kill_disable 0\nunder_oom 0\noom_kill 0\n';
    expect(parseCgroupMemory({ limitInBytes: '201326592\n', maxUsageInBytes: '120586240\n', oomControl })).toEqual({
      limitBytes: 201326592,
      peakBytes: 120586240,
      oomKills: 0,
    });
    expect(parseCgroupMemory({ limitInBytes: '9223372036854771712\n', maxUsageInBytes: '1\n', oomControl }).limitBytes).toBeUndefined();
  });

  it('gives undefined for what a directory does not have', () => {
    const dir = scratch();
    expect(readCgroupMemory(dir)).toEqual({ limitBytes: undefined, peakBytes: undefined, oomKills: undefined });
    writeFileSync(join(dir, 'memory.max'), '1048576\n');
    expect(readCgroupMemory(dir).limitBytes).toBe(1048576);
  });

  it('refuses a directory without a writable cgroup.procs, saying how to make one', () => {
    const dir = scratch();
    expect(() => checkCgroupDir(dir)).toThrow(/cgroup\.procs is missing or not writable.*memory\.max.*memory\.limit_in_bytes/);
    writeFileSync(join(dir, 'cgroup.procs'), '');
    expect(() => checkCgroupDir(dir)).not.toThrow();
  });

  it('starts the command with the pid it wrote to cgroup.procs, arguments intact', () => {
    const dir = scratch();
    writeFileSync(join(dir, 'cgroup.procs'), '');
    const [command, args] = inCgroup(dir, process.execPath, ['-e', 'console.log(process.pid, process.argv[1])', 'a b "c"']);
    const result = spawnSync(command, args, { encoding: 'utf8' });
    expect(result.status).toBe(0);
    const pid = result.stdout.trim().split(' ')[0];
    expect(readFileSync(join(dir, 'cgroup.procs'), 'utf8').trim()).toBe(pid);
    expect(pid).toBe(String(result.pid));
    expect(result.stdout.trim()).toBe(`${pid} a b "c"`);
  });
});
