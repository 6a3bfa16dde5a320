// kernels/wgsl/**/*.wgsl by path ('lora_shrink.wgsl', 'include/lora_tile.wgsl', ...), a
// module that scripts/build-web.mjs generates from the files while it bundles src/web.
declare module 'mote:wgsl-sources' {
  const sources: Readonly<Record<string, string>>;
  export default sources;
}
