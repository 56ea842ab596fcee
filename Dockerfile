FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends \
        openssh-client libvirt-dev pkg-config gcc ipmitool libxml2-utils \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
RUN DJANGO_SETTINGS_MODULE=xenaoe_panel.settings SECRET_KEY=build python manage.py collectstatic --noinput
EXPOSE 8000
