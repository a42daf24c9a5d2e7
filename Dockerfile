# bgpvip image: ExaBGP + bgpvip. Build: docker build -t <registry>/bgpvip:0.1.0 .
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bgpvip ./bgpvip
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
# iproute2 for operators who exec in to look at addresses; bgpvip itself uses netlink directly
RUN apt-get update \
 && apt-get install -y --no-install-recommends iproute2 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
ENV PYTHONUNBUFFERED=1
ENTRYPOINT ["bgpvip"]
CMD ["run", "--config", "/etc/bgpvip/config.yaml"]
