// Global setup for child jest runs started by test/cross-cpu.test.ts: the parent run already compiled dist/.
module.exports = async () => {};
