# scrubline on the current Node.js LTS (Debian slim), with Debian's security-patched ffmpeg,
# running as a non-root user. test/dockerfile.test.ts performs these steps (no registry is
# reachable where it runs): keep every step one it can follow.
ARG NODE_MAJOR=26

# Build: compile the TypeScript, then keep only what the service runs on.
FROM node:${NODE_MAJOR}-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
# --ignore-scripts: nothing here needs an install script (sharp's binaries come as packages, the
# SQLite driver is Node's own); the development-only ones would fetch ffmpeg and Node builds.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY src ./src
RUN node node_modules/typescript/bin/tsc -p tsconfig.build.json
# The ledger's PostgreSQL driver and the bucket's SDK (its client, and lib-storage for multipart writes) are optional peers of the library (development
# dependencies here); the service needs both: made its dependencies, at the versions
# package-lock.json pins, before everything else that is only for development goes.
RUN for pkg in pg @aws-sdk/client-s3 @aws-sdk/lib-storage; do \
      npm pkg set "dependencies.$pkg=$(node -p "require('./package-lock.json').packages['node_modules/$pkg'].version")" && npm pkg delete "devDependencies.$pkg"; \
    done \
 && npm install --omit=dev --ignore-scripts --no-audit --no-fund \
 && npm prune --omit=dev --ignore-scripts --no-audit --no-fund

# Run: no compiler, no npm cache, no sources; the data dir is the only place it writes.
FROM node:${NODE_MAJOR}-bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ffmpeg libheif-examples && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --home-dir /var/lib/scrubline --uid 10001 scrubline
WORKDIR /app
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY bin ./bin
COPY schemas ./schemas
ENV NODE_ENV=production \
    SCRUBLINE_DATA_DIR=/var/lib/scrubline/data \
    SCRUBLINE_FFMPEG_PATH=/usr/bin/ffmpeg \
    SCRUBLINE_FFPROBE_PATH=/usr/bin/ffprobe
USER 10001
EXPOSE 8080
# Follows SCRUBLINE_PORT and, with a certificate configured, speaks HTTPS.
HEALTHCHECK CMD ["node", "bin/healthcheck.js"]
CMD ["bin/serve.sh"]
