#!/bin/sh
# Starts the long-running service with the memory settings `npm run load` measures it with
# (goal: RSS <= 150 MiB under load, flat in file size). Each is set only if the caller has not.
#   MALLOC_MMAP_THRESHOLD_  pinned at glibc's initial 128 KiB. Left alone, glibc raises it to the
#                           size of the biggest block freed so far, after which a photo's
#                           megabyte-sized buffers come from the heap and stay resident once
#                           freed; pinned, they are mmapped and handed back to the kernel.
#   MALLOC_ARENA_MAX        libvips and libuv worker threads would each get an arena of their own.
#   --max-semi-space-size   V8's young generation grows to 2 x 16 MiB under load by default. At
#                           1 MiB the request chunks' external memory is freed sooner, by more
#                           (cheap) scavenges: photo-phase peak RSS 124-127 MiB against 143-147
#                           at 4 MiB, photos/s the same (npm run load, interleaved runs).
#   --initial-old-space-size  V8 starts an incremental marking whenever the old generation nears
#                           a limit it derives from the live heap (~20 MiB here): under load that
#                           was ~18 full collections a second, freeing next to nothing. At 64 MiB
#                           it never does, and the collection below is the only one: 15.7-16.5
#                           photos/s against 13.5, p50 ~136 ms against ~165, RSS ~136 against ~130
#                           (npm run load, interleaved; 96 and 128 measured the same as 64).
#   --expose-gc             lets the service free dead upload buffers when a request ends (see
#                           releaseDeadBuffers in src/http/server.ts) instead of after 64 MiB pile up.
#   --no-memory-reducer     V8's memory reducer starts extra full collections to shrink the heap,
#                           which the collection above already keeps small: under load they cost
#                           ~8 % of photos/s (npm run load, 7 runs against 9, interleaved).
#   --no-maglev --no-sparkplug  V8's two middle compilers, between its interpreter and TurboFan.
#                           The service's hot code (the JPEG walk, the request path) is TurboFan's
#                           within seconds either way; the middle tiers only add code of their own
#                           and touch more of the node binary's pages: photo-phase peak RSS 147-152
#                           MiB against 155-157 (node binary -3, V8 heap -2, malloc -1-2), photos/s
#                           the same (12.2-15.2 against 12.6-14.9; npm run load, issue 30).
# `exec`, so that no shell stays in front of the service and signals reach it directly.
export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-131072}"
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-2}"
exec node --initial-old-space-size=64 --max-semi-space-size=1 --expose-gc --no-memory-reducer --no-maglev --no-sparkplug "$(dirname "$0")/scrubline.js" serve "$@"
