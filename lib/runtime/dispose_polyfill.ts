/**
 * `await using` needs Symbol.asyncDispose. Node 20 defines it in its main realm as Symbol.for('nodejs.asyncDispose'),
 * but other realms (vm contexts, e.g. jest) may lack it; define the same registered symbols there so classes get a
 * working `[Symbol.asyncDispose]` wherever they are loaded. Imported before any class that uses it.
 */
const S = Symbol as unknown as { asyncDispose?: symbol; dispose?: symbol };
S.asyncDispose ??= Symbol.for('nodejs.asyncDispose');
S.dispose ??= Symbol.for('nodejs.dispose');
export {};
