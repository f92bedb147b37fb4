from django.urls import path

from shop import views

urlpatterns = [
    path("count", views.count),
    path("pid", views.backend_pid),
    path("buy/<str:name>", views.buy),
]
