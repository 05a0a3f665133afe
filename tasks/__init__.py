"""pgjobs' tasks: ``tasks.send_sign_in_email`` and ``tasks.delete_old_data``.

Call them with the plain Celery API, e.g.
``send_sign_in_email.apply_async(kwargs={"email": ..., "name": ..., "code": ...}, countdown=10)``.
"""

from tasks.sign_in import send_sign_in_email

__all__ = ["send_sign_in_email"]
