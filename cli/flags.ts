// Flag parsing shared by the CLI's commands: each command lists the flags it
// takes, anything else is refused naming the flag (exit code 2).

export class UsageError extends Error {}

export interface FlagDef {
  /** Spellings, e.g. ["-n", "--namespace"]. */
  readonly names: readonly string[];
  readonly key: string;
  /** bool takes no value; list may repeat. */
  readonly kind: "value" | "bool" | "list";
  readonly choices?: readonly string[];
}

export interface ParsedArgs {
  readonly values: Readonly<Record<string, string | boolean | string[]>>;
  readonly positional: readonly string[];
  readonly help: boolean;
}

export function parseArgs(argv: readonly string[], defs: readonly FlagDef[]): ParsedArgs {
  const values: Record<string, string | boolean | string[]> = {};
  const positional: string[] = [];
  let help = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "-h" || arg === "--help") {
      help = true;
      continue;
    }
    if (arg === "--") {
      positional.push(...argv.slice(i + 1));
      break;
    }
    if (!arg.startsWith("-") || arg === "-") {
      positional.push(arg);
      continue;
    }
    const eq = arg.startsWith("--") ? arg.indexOf("=") : -1;
    const name = eq > 0 ? arg.slice(0, eq) : arg;
    const def = defs.find((d) => d.names.includes(name));
    if (def === undefined) throw new UsageError(`unknown flag ${name}`);
    if (def.kind === "bool") {
      if (eq > 0) throw new UsageError(`${name}: takes no value`);
      values[def.key] = true;
      continue;
    }
    let value: string | undefined;
    if (eq > 0) value = arg.slice(eq + 1);
    else {
      value = argv[++i];
      if (value === undefined) throw new UsageError(`${name}: needs a value`);
    }
    if (def.choices !== undefined && !def.choices.includes(value)) {
      throw new UsageError(`${name}: must be ${oneOf(def.choices)}, got ${JSON.stringify(value)}`);
    }
    if (value === "") throw new UsageError(`${name}: needs a value`);
    if (def.kind === "list") values[def.key] = [...((values[def.key] as string[] | undefined) ?? []), value];
    else values[def.key] = value;
  }
  return { values, positional, help };
}

function oneOf(choices: readonly string[]): string {
  return choices.length === 1
    ? choices[0]!
    : `${choices.slice(0, -1).join(", ")} or ${choices[choices.length - 1]}`;
}

export const str = (args: ParsedArgs, key: string): string | undefined => {
  const v = args.values[key];
  return typeof v === "string" ? v : undefined;
};
export const bool = (args: ParsedArgs, key: string): boolean => args.values[key] === true;
export const list = (args: ParsedArgs, key: string): string[] => {
  const v = args.values[key];
  return Array.isArray(v) ? v : [];
};

// Flags several commands share.
export const KUBE_FLAGS: readonly FlagDef[] = [
  { names: ["--kubeconfig"], key: "kubeconfig", kind: "value" },
  { names: ["--context"], key: "context", kind: "value" },
];
export const KAFKA_FLAGS: readonly FlagDef[] = [
  { names: ["--brokers"], key: "brokers", kind: "value" },
  { names: ["--topic"], key: "topic", kind: "value" },
];
