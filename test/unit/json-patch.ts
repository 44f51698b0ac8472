// A small, strict RFC 6902 applier (add, remove, replace, test) for tests:
// it throws where the RFC says the patch fails (missing parent, index out of
// range, `-` anywhere but the last add segment), so a patch that the API
// server would reject fails the test too.
import { isDeepStrictEqual } from "node:util";

export interface Operation {
  op: string;
  path: string;
  value?: unknown;
}

export function applyPatch<T>(doc: T, patch: readonly Operation[]): T {
  let root: unknown = structuredClone(doc);
  for (const op of patch) root = applyOne(root, op);
  return root as T;
}

function parsePointer(path: string): string[] {
  if (path === "") return [];
  if (!path.startsWith("/")) throw new Error(`pointer ${path} must start with /`);
  return path
    .slice(1)
    .split("/")
    .map((s) => {
      if (/~[^01]|~$/.test(s)) throw new Error(`pointer ${path} has a bad escape`);
      return s.replaceAll("~1", "/").replaceAll("~0", "~");
    });
}

function applyOne(root: unknown, op: Operation): unknown {
  const segments = parsePointer(op.path);
  if (segments.length === 0) {
    if (op.op === "add" || op.op === "replace") return structuredClone(op.value);
    if (op.op === "test") {
      if (!isDeepStrictEqual(root, op.value)) throw new Error("test failed at the root");
      return root;
    }
    throw new Error(`cannot ${op.op} the root`);
  }
  let parent: unknown = root;
  for (const s of segments.slice(0, -1)) parent = child(parent, s, op.path);
  const last = segments.at(-1)!;
  if (Array.isArray(parent)) {
    const index = last === "-" && op.op === "add" ? parent.length : arrayIndex(last, op.path);
    switch (op.op) {
      case "add":
        if (index > parent.length) throw new Error(`${op.path}: index out of range`);
        parent.splice(index, 0, structuredClone(op.value));
        return root;
      case "remove":
      case "replace":
        if (index >= parent.length) throw new Error(`${op.path}: index out of range`);
        if (op.op === "remove") parent.splice(index, 1);
        else parent[index] = structuredClone(op.value);
        return root;
      case "test":
        if (!isDeepStrictEqual(parent[index], op.value)) throw new Error(`${op.path}: test failed`);
        return root;
    }
  } else if (typeof parent === "object" && parent !== null) {
    const obj = parent as Record<string, unknown>;
    switch (op.op) {
      case "add":
        obj[last] = structuredClone(op.value);
        return root;
      case "remove":
      case "replace":
        if (!Object.hasOwn(obj, last)) throw new Error(`${op.path}: no such member`);
        if (op.op === "remove") delete obj[last];
        else obj[last] = structuredClone(op.value);
        return root;
      case "test":
        if (!isDeepStrictEqual(obj[last], op.value)) throw new Error(`${op.path}: test failed`);
        return root;
    }
  }
  throw new Error(`${op.path}: cannot ${op.op} here`);
}

function child(parent: unknown, s: string, path: string): unknown {
  if (Array.isArray(parent)) {
    const i = arrayIndex(s, path);
    if (i >= parent.length) throw new Error(`${path}: index out of range`);
    return parent[i];
  }
  if (typeof parent === "object" && parent !== null && Object.hasOwn(parent, s)) {
    return (parent as Record<string, unknown>)[s];
  }
  throw new Error(`${path}: parent ${s} does not exist`);
}

function arrayIndex(s: string, path: string): number {
  if (!/^(0|[1-9][0-9]*)$/.test(s)) throw new Error(`${path}: ${s} is not an array index`);
  return Number(s);
}
