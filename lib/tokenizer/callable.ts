/**
 * Base class for objects that are called like functions, as Python objects with `__call__` are
 * (`tokenizer(text)`, `data_collator(features)`). The constructor returns a real function whose prototype chain is
 * the subclass's, so `instanceof`, methods and fields work as usual and `typeof x === 'function'`.
 *
 * Subclasses implement `__call__` and declare their call signatures by interface merging:
 * `export interface Foo { (x: X): Y }  export class Foo extends Callable { __call__(x: X): Y {...} }`.
 * (Subclasses must not rely on the function's own `name` / `length` properties.)
 */
export abstract class Callable {
  constructor() {
    // An arrow function: no own `prototype` property, and `this` does not matter.
    const closure = (...args: unknown[]): unknown => (closure as unknown as Callable).__call__(...args);
    // Returning an object from a constructor makes it the instance; subclass fields are then defined on it.
    return Object.setPrototypeOf(closure, new.target.prototype);
  }

  /** What calling the object does. */
  abstract __call__(...args: unknown[]): unknown;
}
// Keep Function.prototype (apply / bind / call) in the chain: instances are genuine functions.
Object.setPrototypeOf(Callable.prototype, Function.prototype);
