FROM python:3.12-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml constraints.txt ./
COPY backend ./backend
COPY migrations ./migrations
COPY alembic.ini ./
RUN pip install --no-cache-dir -c constraints.txt . \
 && useradd --system --uid 10001 agentry
USER agentry
EXPOSE 8000
CMD ["agentry", "api"]
