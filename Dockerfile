# The `kaiwa` server image: a release build on a slim runtime.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p kaiwa

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/kaiwa /usr/local/bin/kaiwa
EXPOSE 8080
ENTRYPOINT ["kaiwa", "serve", "--host", "0.0.0.0", "--port", "8080"]
