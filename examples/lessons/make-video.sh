#!/usr/bin/env bash
# Regenerates fractions/media/video.mp4 (small H.264/AAC test clip, 8 s, keyframe every second) so the sample lesson has a seekable video.
set -euo pipefail
cd "$(dirname "$0")"
ffmpeg -hide_banner -loglevel error -y \
  -f lavfi -i "testsrc=size=320x240:rate=25:duration=8" \
  -f lavfi -i "sine=frequency=440:sample_rate=44100:duration=8" \
  -c:v libx264 -profile:v main -preset medium -crf 30 -pix_fmt yuv420p -g 25 -keyint_min 25 -sc_threshold 0 \
  -c:a aac -b:a 64k -ac 1 \
  -map_metadata -1 -fflags +bitexact -flags:v +bitexact -flags:a +bitexact \
  -movflags +faststart -shortest \
  fractions/media/video.mp4
