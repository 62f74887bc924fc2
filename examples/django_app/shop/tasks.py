# examples/django_app/shop/tasks.py
import unbroken

app = unbroken.App()  # the same database as Django's (UNBROKEN_DATABASE_URL or DATABASE_URL)


@app.task(queue="mail", max_attempts=5)
def send_welcome(signup_id: int) -> None:
    print(f"welcome, signup {signup_id}")
