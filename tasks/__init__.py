"""pgjobs' tasks: ``tasks.send_sign_in_email`` and ``tasks.delete_old_data``.

Call them with the plain Celery API, e.g.
``send_sign_in_email.apply_async(kwargs={"email": ..., "name": ..., "code": ...}, countdown=10)``
or ``delete_old_data.delay(dry_run=True)``.
"""

from tasks.cleanup import delete_old_data
from tasks.sign_in import send_sign_in_email

__all__ = ["delete_old_data", "send_sign_in_email"]
