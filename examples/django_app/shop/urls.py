from django.urls import path

from shop import views

urlpatterns = [
    path("signup", views.signup),
    path("signup-on-commit", views.signup_on_commit),
]
