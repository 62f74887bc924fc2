# examples/django_app/shop/views.py
from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from shop.models import Signup
from shop.tasks import send_welcome


def check_domain(email: str) -> None:
    """Stands in for any step after the enqueue that can fail (a payment, a second write)."""
    if email.endswith(".invalid"):
        raise ValueError(f"{email}: no such domain")


@csrf_exempt  # an API called with JSON clients; keep CSRF on for browser forms
@require_POST
def signup(request: HttpRequest) -> HttpResponse:
    """The row and its job in one transaction, on Django's connection: both or neither."""
    email = request.POST["email"]
    try:
        with transaction.atomic():
            row = Signup.objects.create(email=email)
            job_id = send_welcome.using(conn=connection.connection).enqueue(row.pk)
            check_domain(email)
    except ValueError as exc:
        return HttpResponseBadRequest(str(exc))
    return JsonResponse({"signup": row.pk, "job": job_id}, status=201)


@csrf_exempt
@require_POST
def signup_on_commit(request: HttpRequest) -> HttpResponse:
    """The job is enqueued (on unbroken's own pool) once Django commits, never on rollback;
    not atomic: a crash between the commit and the enqueue loses the job."""
    email = request.POST["email"]
    try:
        with transaction.atomic():
            row = Signup.objects.create(email=email)
            transaction.on_commit(lambda: send_welcome.enqueue(row.pk))
            check_domain(email)
    except ValueError as exc:
        return HttpResponseBadRequest(str(exc))
    return JsonResponse({"signup": row.pk}, status=201)
