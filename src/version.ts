// The package version, as a constant so that every entry (Node, the browser bundle) has it
// without reading package.json at run time; test/packaging.test.ts keeps it equal to package.json's.
export const VERSION = '0.1.0';
