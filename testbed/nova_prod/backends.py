"""MariaDB and RabbitMQ from Debian, run by the bed itself: no systemd, no init scripts,
every file in the bed's state dir, listening on 127.0.0.1 on free ports, stopped by PID.
The machine's own MariaDB/RabbitMQ (if any) are neither used nor touched."""

from __future__ import annotations

import os
import secrets
import subprocess

from testbed.nova_prod.procs import Child, free_port, port_open, wait_for

MARIADBD = "/usr/sbin/mariadbd"
MARIADB_INSTALL_DB = "/usr/bin/mariadb-install-db"
EPMD = "/usr/bin/epmd"
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
DEBIAN_BINARIES = (MARIADBD, MARIADB_INSTALL_DB, EPMD, RABBITMQ_SERVER)


def missing_binaries() -> list[str]:
    return [path for path in DEBIAN_BINARIES if not os.access(path, os.X_OK)]


class MariaDB:
    """mariadbd with its own datadir, socket and TCP port; one SQL user for the bed."""

    user = "nova"

    def __init__(self, state_dir: str) -> None:
        self.dir = os.path.join(state_dir, "mariadb")
        self.datadir = os.path.join(self.dir, "data")
        self.socket = os.path.join(self.dir, "mysqld.sock")
        self.port = free_port()
        self.password = secrets.token_hex(12)
        self.child: Child | None = None
        self.state_dir = state_dir

    def url(self, database: str) -> str:
        return f"mysql+pymysql://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def start(self, databases: list[str]) -> None:
        os.makedirs(self.dir, exist_ok=True)
        if not os.path.isdir(os.path.join(self.datadir, "mysql")):
            subprocess.run(
                [MARIADB_INSTALL_DB, "--no-defaults", f"--datadir={self.datadir}", "--user=root"]
                + ["--auth-root-authentication-method=socket", "--skip-test-db"],
                check=True,
                capture_output=True,
                timeout=120,
            )
        env = dict(os.environ, HOME=self.dir)  # the bed's own, as every process of it
        self.child = Child("mariadb", self._command(), self.state_dir, env)
        wait_for("MariaDB", lambda: port_open(self.port), 60, self.child)
        self._create(databases)

    def _command(self) -> list[str]:
        return [
            MARIADBD,
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--socket={self.socket}",
            f"--pid-file={os.path.join(self.dir, 'mariadbd.pid')}",
            f"--log-error={os.path.join(self.dir, 'error.log')}",
            f"--tmpdir={self.dir}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            "--skip-name-resolve",
            "--user=root",
            "--max-connections=1000",
            "--innodb-buffer-pool-size=128M",
            "--innodb-flush-log-at-trx-commit=2",  # a test bed: no fsync per commit
            "--character-set-server=utf8mb4",
        ]

    def _create(self, databases: list[str]) -> None:
        import pymysql

        conn = pymysql.connect(unix_socket=self.socket, user="root", connect_timeout=10)
        try:
            with conn.cursor() as cur:
                for name in databases:
                    cur.execute(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4")
                cur.execute(
                    f"CREATE USER IF NOT EXISTS '{self.user}'@'127.0.0.1' IDENTIFIED BY %s",
                    (self.password,),
                )
                cur.execute(
                    f"ALTER USER '{self.user}'@'127.0.0.1' IDENTIFIED BY %s", (self.password,)
                )
                cur.execute(f"GRANT ALL PRIVILEGES ON *.* TO '{self.user}'@'127.0.0.1'")
            conn.commit()
        finally:
            conn.close()

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(timeout=30)


class RabbitMQ:
    """epmd (own port) and a RabbitMQ node, HOME (Erlang cookie), Mnesia, logs and config
    in the state dir."""

    def __init__(self, state_dir: str) -> None:
        self.dir = os.path.join(state_dir, "rabbitmq")
        self.state_dir = state_dir
        self.port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.epmd: Child | None = None
        self.child: Child | None = None

    @property
    def transport_url(self) -> str:
        return f"rabbit://guest:guest@127.0.0.1:{self.port}/"

    def env(self) -> dict[str, str]:
        d = self.dir
        return dict(
            os.environ,
            HOME=d,
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_NODENAME="rabbit@localhost",
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=os.path.join(d, "mnesia"),
            RABBITMQ_LOG_BASE=os.path.join(d, "log"),
            RABBITMQ_LOGS=os.path.join(d, "log", "rabbit.log"),
            RABBITMQ_CONFIG_FILE=os.path.join(d, "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=os.path.join(d, "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=os.path.join(d, "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(d, "enabled_plugins"),
            RABBITMQ_ENABLED_PLUGINS="",
            RABBITMQ_PID_FILE=os.path.join(d, "rabbit.pid"),
            RABBITMQ_USE_LONGNAME="false",
        )

    def start(self) -> None:
        """Start epmd and the node; ``wait`` waits for its AMQP port."""
        for sub in ("mnesia", "log"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        files = {
            "rabbitmq.conf": "loopback_users.guest = true\nlog.console = false\n",
            "advanced.config": "[].\n",
            "rabbitmq-env.conf": "",
            "enabled_plugins": "[].\n",
        }
        for name, text in files.items():
            with open(os.path.join(self.dir, name), "w") as f:
                f.write(text)
        env = self.env()
        # epmd in the foreground, on its own port: its PID is ours to stop (Erlang would
        # otherwise start a daemonized one).
        self.epmd = Child("epmd", [EPMD, "-port", str(self.epmd_port)], self.state_dir, env)
        wait_for("epmd", lambda: port_open(self.epmd_port), 20, self.epmd)
        self.child = Child("rabbitmq", [RABBITMQ_SERVER], self.state_dir, env)

    def wait(self, timeout: float = 120) -> None:
        assert self.child is not None
        wait_for("RabbitMQ", lambda: port_open(self.port), timeout, self.child)

    def stop(self) -> None:
        for child in (self.child, self.epmd):
            if child is not None:
                child.stop(timeout=30)
