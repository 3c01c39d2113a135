# chatbot: the meeting bot. Build: docker build -t chatbot .
# Run:   docker run -v $PWD/config.yaml:/config/config.yaml:ro -v chatbot-data:/data chatbot
# The config should say `data_dir: /data` so the database, saved login and notes
# live on the volume.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 chatbot \
    && mkdir -p /data /config \
    && chown chatbot:chatbot /data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY chatbot ./chatbot
RUN pip install .

USER chatbot
VOLUME ["/data"]
ENTRYPOINT ["chatbot"]
CMD ["run", "-c", "/config/config.yaml"]
