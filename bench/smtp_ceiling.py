"""The ceiling under the peer benchmark: bare SMTP sends to its sink, no queue, no database.

    flock /tmp/flashsend-bench.lock .venv/bin/python -m bench.smtp_ceiling --n 2000 --threads 1 4 16

The same sink as `bench/peer.py` (`flashsend.fakes.FakeSmtpServer` in this process, not
parsing), and a client in a process of its own sending N messages built with the
standard library's ``EmailMessage`` over one kept ``smtplib`` connection per thread. It
prints the rate and the CPU per message of the client and of the sink: what any Python
sender, FlashSend or django-post_office, pays per email on this machine before its own work.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

CLIENT = r"""
import smtplib, sys, threading, time
from email.message import EmailMessage

host, port, n, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])


def work() -> None:
    smtp = smtplib.SMTP(host, port, local_hostname="localhost")
    for i in range(n // threads):
        message = EmailMessage()
        message["Subject"] = "ceiling"
        message["From"] = "FlashSend <noreply@localhost>"
        message["To"] = f"peer{i}@example.com"
        message.set_content("bench")
        smtp.send_message(message)
    smtp.quit()


cpu, wall = time.process_time(), time.perf_counter()
workers = [threading.Thread(target=work) for _ in range(threads)]
for worker in workers:
    worker.start()
for worker in workers:
    worker.join()
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
print(f"{n / wall:.0f} {cpu / n * 1000:.2f}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--sink", choices=("lean", "aiosmtpd"), default="aiosmtpd")
    args = parser.parse_args()
    from bench.sink import open_sink

    with open_sink(args.sink) as sink:
        for threads in args.threads:
            sink.reset()
            sink_cpu = time.process_time()
            done = subprocess.run(  # noqa: S603 - this interpreter, fixed arguments
                [
                    sys.executable,
                    "-c",
                    CLIENT,
                    sink.host,
                    str(sink.port),
                    str(args.n),
                    str(threads),
                ],
                capture_output=True,
                text=True,
                check=True,
                timeout=300,
            )
            sink_cpu = time.process_time() - sink_cpu
            rate, client_cpu = done.stdout.split()
            print(
                f"{threads:>3} threads: {rate}/s, client CPU {client_cpu} ms per message, "
                f"sink CPU {sink_cpu / args.n * 1000:.2f} ms per message"
            )


if __name__ == "__main__":
    main()
