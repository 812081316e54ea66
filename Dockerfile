# scrubline on Debian slim with Debian's security-patched ffmpeg; runs as a non-root user.
FROM node:20-bookworm-slim AS build
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json .npmrc tsconfig.json tsconfig.build.json ./
COPY bin ./bin
COPY src ./src
RUN npm ci && npm prune --omit=dev

FROM node:20-bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ffmpeg && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --home-dir /var/lib/scrubline scrubline
WORKDIR /app
COPY --from=build /app /app
ENV NODE_ENV=production \
    SCRUBLINE_DATA_DIR=/var/lib/scrubline/data \
    SCRUBLINE_FFMPEG_PATH=/usr/bin/ffmpeg \
    SCRUBLINE_FFPROBE_PATH=/usr/bin/ffprobe
USER scrubline
EXPOSE 8080
HEALTHCHECK CMD node -e "fetch('http://127.0.0.1:8080/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
CMD ["bin/serve.sh"]
