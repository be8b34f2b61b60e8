/**
 * Runs async tasks one after another, in call order. Native objects are also mutex-protected, but libuv's pool may
 * start queued workers in any order; this queue keeps calls on one model in the order the program issued them.
 */
export class SerialQueue {
  private tail: Promise<unknown> = Promise.resolve();

  run<T>(task: () => Promise<T>): Promise<T> {
    const result = this.tail.then(task, task);
    this.tail = result.catch(() => undefined);
    return result;
  }
}
