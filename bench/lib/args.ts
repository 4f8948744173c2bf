/** Command-line flags of `npm run bench` and `npm run soak`: declared once, parsed strictly, with help text. */
import { parseArgs } from 'node:util';

export interface FlagSpec {
  type: 'string' | 'boolean';
  description: string;
  default?: string;
}

export type Flags = Readonly<Record<string, FlagSpec>>;

export interface Parsed {
  string(name: string): string;
  number(name: string, min: number): number;
  boolean(name: string): boolean;
  list(name: string): string[];
}

export function helpText(command: string, summary: string, flags: Flags): string {
  const lines = [summary, '', `Usage: ${command} [flags]`, '', 'Flags:'];
  for (const [name, spec] of Object.entries(flags)) {
    const flag = `--${name}${spec.type === 'string' ? ' VALUE' : ''}`;
    lines.push(`  ${flag.padEnd(26)} ${spec.description}${spec.default ? ` [default ${spec.default}]` : ''}`);
  }
  return `${lines.join('\n')}\n`;
}

/** Parse `argv`; throws with a readable message on unknown flags or bad values. */
export function parse(argv: readonly string[], flags: Flags): Parsed & { help: boolean } {
  const options: Record<string, { type: 'string' | 'boolean' }> = { help: { type: 'boolean' } };
  for (const [name, spec] of Object.entries(flags)) options[name] = { type: spec.type };
  const { values } = parseArgs({ args: [...argv], options, allowPositionals: false, strict: true });
  const raw = values as Record<string, string | boolean | undefined>;
  const string = (name: string): string => {
    const v = raw[name];
    if (typeof v === 'string') return v;
    const d = flags[name]?.default;
    if (d === undefined) throw new Error(`--${name} is required`);
    return d;
  };
  return {
    help: raw['help'] === true,
    string,
    number(name, min) {
      const text = string(name);
      const n = Number(text);
      if (!Number.isFinite(n) || n < min) throw new Error(`--${name} must be a number ≥ ${min}, not "${text}"`);
      return n;
    },
    boolean: (name) => raw[name] === true,
    list: (name) =>
      string(name)
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean),
  };
}
