/** @type {import('jest').Config} */
module.exports = {
  preset: 'ts-jest',
  testEnvironment: 'node',
  testMatch: ['<rootDir>/test/**/*.test.ts'],
  testTimeout: 120000,
  globalSetup: '<rootDir>/test/global-setup.js',
  // Native work runs on libuv threads; keep test files in one worker at a time on these 2-core machines.
  maxWorkers: 1,
};
